//! Terminal progress bars for a fetch: the one [`Progress`] that both
//! `cargo xtask fetch-data` and `lt-cli run` / `train` (fetching a missing
//! CIFAR set) show, so the two draw the same bars.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Progress;

/// indicatif bars on stderr, one step at a time; drawn only when stderr is a
/// terminal, so logs and tests stay clean.
#[derive(Debug, Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// No bar until the first step starts.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for Bars {
    fn start(&self, message: &str, total: Option<u64>, bytes: bool) {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = match (total.is_some(), bytes) {
            (true, true) => "{msg}\n[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})",
            (true, false) => "{msg}\n[{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
            (false, _) => "{spinner} {msg} [{elapsed_precise}]",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        // A step of unknown size never calls `inc`; the tick keeps its spinner
        // turning so a long unpack does not look hung.
        if total.is_none() {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn inc(&self, n: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(b) = slot.as_ref() {
                b.inc(n);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(b) = slot.take() {
                b.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(b: &Bars) -> Option<(u64, Option<u64>, String)> {
        let slot = b.bar.lock().unwrap();
        slot.as_ref()
            .map(|p| (p.position(), p.length(), p.message()))
    }

    #[test]
    fn a_step_counts_its_increments_and_the_next_step_replaces_it() {
        let b = Bars::new();
        assert_eq!(current(&b), None);
        b.inc(3); // before any step: ignored, no panic
        b.start("downloading x", Some(100), true);
        b.inc(30);
        b.inc(12);
        assert_eq!(current(&b), Some((42, Some(100), "downloading x".into())));
        b.start("unpacking", None, false);
        assert_eq!(current(&b), Some((0, None, "unpacking".into())));
        b.finish();
        assert_eq!(current(&b), None);
        b.finish(); // twice: still fine
    }
}
