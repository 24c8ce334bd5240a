//! Paper-style tables and seed statistics.

use lt_metrics::Evaluation;
use std::fmt::Write;

/// Renders `method | Many | Medium | Few | All` rows in percent with one
/// decimal, as the paper's tables. `All` is the micro top-1 accuracy; a group
/// without classes prints `–`. A `|` in a method name is escaped.
///
/// ```
/// # use lt_report::markdown_table;
/// let table = markdown_table(&[]);
/// assert_eq!(table, "| Method | Many | Medium | Few | All |\n|---|---:|---:|---:|---:|\n");
/// ```
pub fn markdown_table(rows: &[(&str, &Evaluation)]) -> String {
    let mut out =
        String::from("| Method | Many | Medium | Few | All |\n|---|---:|---:|---:|---:|\n");
    for (name, e) in rows {
        let cells = [e.many, e.medium, e.few, Some(e.top1)].map(percent);
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            name.replace('|', "\\|"),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
    }
    out
}

fn percent(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}", 100.0 * v),
        _ => "–".to_string(),
    }
}

/// Mean and sample standard deviation (divisor n - 1) of `values`, for results
/// over seeds. One value has standard deviation 0; no value gives `(NaN, NaN)`.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lt_core::stats::{ClassStats, GroupRule};

    #[test]
    fn rows_in_percent_and_empty_groups_as_dashes() {
        // Classes: many, medium, few; predictions right for class 0 only and
        // half right for class 1.
        let logits = [1f32, 0., 0., 0., 1., 0., 1., 0., 0., 1., 0., 0.];
        let labels = [0u32, 1, 1, 2];
        let stats = ClassStats::from_counts(vec![500, 50, 5]);
        let e = lt_metrics::evaluate(&logits, 3, &labels, &stats, &GroupRule::default()).unwrap();
        let t = markdown_table(&[("Joint", &e), ("a|b", &e)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| Method | Many | Medium | Few | All |");
        assert_eq!(lines[2], "| Joint | 100.0 | 50.0 | 0.0 | 50.0 |");
        assert_eq!(lines[3], "| a\\|b | 100.0 | 50.0 | 0.0 | 50.0 |");
        let all_many = ClassStats::from_counts(vec![500; 3]);
        let e =
            lt_metrics::evaluate(&logits, 3, &labels, &all_many, &GroupRule::default()).unwrap();
        let t = markdown_table(&[("all many", &e)]);
        assert!(t.contains("| all many | 50.0 | – | – | 50.0 |"), "{t}");
    }

    #[test]
    fn mean_std_cases() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[0.7]), (0.7, 0.0));
        let (m, s) = mean_std(&[]);
        assert!(m.is_nan() && s.is_nan());
    }
}
