//! The class-count histogram of a training split (`lt-cli init`): one bar
//! per class, largest first, coloured by many / medium / few group.

use std::path::{Path, PathBuf};

use lt_core::stats::{ClassStats, GroupRule, ShotGroup};

use crate::plot::{save, Bars, Figure, LegendPosition, Panel, PALETTE};
use crate::ReportError;

/// Above this many classes the bars carry no names.
const NAMED_UP_TO: usize = 40;

/// The histogram of `counts` (indexed by class; `names` label the bars when
/// there are few enough), classes sorted by count, each group of `rule` in
/// its own colour.
pub fn class_counts_figure(
    title: &str,
    names: &[String],
    counts: &[usize],
    rule: &GroupRule,
) -> Figure {
    let stats = ClassStats::from_counts(counts.to_vec());
    let groups = stats.groups(rule);
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&j| (std::cmp::Reverse(counts[j]), j));
    let mut panel = Panel::new(title, "class (by training count)", "training images");
    for (k, g) in ShotGroup::ALL.into_iter().enumerate() {
        let bars: Vec<(f64, f64, f64, f64)> = order
            .iter()
            .enumerate()
            .filter(|(_, &j)| groups[j] == g)
            .map(|(i, &j)| (i as f64 - 0.4, i as f64 + 0.4, 0.0, counts[j] as f64))
            .collect();
        if !bars.is_empty() {
            let n = bars.len();
            panel
                .bars
                .push(Bars::new(format!("{} ({n})", g.name()), PALETTE[k], bars));
        }
    }
    if counts.len() <= NAMED_UP_TO && names.len() == counts.len() {
        panel.categories = Some(order.iter().map(|&j| names[j].clone()).collect());
    } else {
        panel.x_range = Some((-0.5, counts.len().max(1) as f64 - 0.5));
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    panel.y_range = Some((0.0, max * 1.08));
    panel.legend = LegendPosition::UpperRight;
    Figure::single(panel)
}

/// Writes the histogram as `<stem>.png` and `<stem>.svg` (atomically).
pub fn save_class_counts(
    stem: &Path,
    title: &str,
    names: &[String],
    counts: &[usize],
    rule: &GroupRule,
) -> Result<[PathBuf; 2], ReportError> {
    save(&class_counts_figure(title, names, counts, rule), stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_bar_per_class_by_group() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let fig = class_counts_figure("t", &names, &[5, 300, 50], &GroupRule::default());
        let p = &fig.panels[0];
        assert_eq!(p.categories.as_deref().unwrap(), ["b", "c", "a"]);
        let per: Vec<usize> = p.bars.iter().map(|b| b.bars.len()).collect();
        assert_eq!(per, [1, 1, 1]);
        let dir = tempfile::tempdir().unwrap();
        let files = save_class_counts(
            &dir.path().join("h"),
            "t",
            &names,
            &[5, 300, 50],
            &GroupRule::default(),
        )
        .unwrap();
        assert!(files.iter().all(|f| f.is_file()));
    }
}
