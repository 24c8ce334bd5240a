//! The time breakdown of `lt-cli run`: how long opening the experiment
//! (loading), stage 1, each stage-2 head and the evaluation took, printed at
//! the end of the pipeline and written to the run directory's
//! `timings.json`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Duration;

use lt_run::{Phase, RunDir, Timings};

#[derive(Default)]
struct Opened {
    /// Time spent opening experiments since the last [`take_loading`].
    loading: Duration,
    /// The run directory of the last experiment opened and whether this
    /// process writes it (rank 0).
    run: Option<(RunDir, bool)>,
}

thread_local! {
    static OPENED: RefCell<Opened> = RefCell::new(Opened::default());
}

/// Records that opening an experiment of `run` took `took`.
pub(crate) fn opened(run: &RunDir, writer: bool, took: Duration) {
    OPENED.with(|o| {
        let mut o = o.borrow_mut();
        o.loading += took;
        o.run = Some((run.clone(), writer));
    });
}

/// The loading time recorded since the last call.
pub(crate) fn take_loading() -> Duration {
    OPENED.with(|o| std::mem::take(&mut o.borrow_mut().loading))
}

/// The run directory of the last experiment opened, if it is this
/// process's to write.
pub(crate) fn written_run() -> Option<RunDir> {
    OPENED.with(|o| match &o.borrow().run {
        Some((run, true)) => Some(run.clone()),
        _ => None,
    })
}

/// The phases of one pipeline, in order.
#[derive(Debug, Default)]
pub(crate) struct Breakdown {
    phases: Vec<Phase>,
}

impl Breakdown {
    /// Adds a command of the pipeline that took `took` in all, of which the
    /// loading time recorded meanwhile ([`take_loading`]) is its own phase.
    pub(crate) fn add_command(&mut self, name: &str, took: Duration) {
        let loading = take_loading().min(took);
        self.phases.push(Phase {
            name: "loading".into(),
            seconds: loading.as_secs_f64(),
        });
        self.phases.push(Phase {
            name: name.into(),
            seconds: (took - loading).as_secs_f64(),
        });
    }

    /// The breakdown with its total.
    pub(crate) fn finish(self, total: Duration) -> Timings {
        Timings {
            phases: self.phases,
            total_seconds: total.as_secs_f64(),
        }
    }
}

/// The table printed at the end of `run`: one row per phase name (loading
/// summed over the pipeline's commands), seconds and share of the total.
pub(crate) fn table(t: &Timings) -> String {
    let rows = t.merged();
    let width = rows
        .iter()
        .map(|p| p.name.chars().count())
        .chain(["total".len()])
        .max()
        .unwrap_or(5);
    let mut s = String::new();
    let _ = writeln!(s, "time breakdown:");
    for p in rows.iter().chain([&Phase {
        name: "total".into(),
        seconds: t.total_seconds,
    }]) {
        let share = if t.total_seconds > 0.0 {
            100.0 * p.seconds / t.total_seconds
        } else {
            0.0
        };
        let pad = " ".repeat(width - p.name.chars().count());
        let _ = writeln!(s, "  {}{pad}  {:>9.1} s  {share:>5.1} %", p.name, p.seconds);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_off_their_loading_and_the_table_merges_it() {
        let mut b = Breakdown::default();
        let run = RunDir::new("r");
        opened(&run, true, Duration::from_secs(2));
        b.add_command("stage 1", Duration::from_secs(10));
        opened(&run, true, Duration::from_secs(1));
        b.add_command("stage 2 crt", Duration::from_secs(4));
        let t = b.finish(Duration::from_secs(14));
        let names: Vec<&str> = t.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["loading", "stage 1", "loading", "stage 2 crt"]);
        assert_eq!(t.phases[1].seconds, 8.0);
        let text = table(&t);
        assert!(
            text.contains("  loading            3.0 s   21.4 %"),
            "{text}"
        );
        assert!(
            text.contains("  total             14.0 s  100.0 %"),
            "{text}"
        );
        assert_eq!(written_run(), Some(run));
    }
}
