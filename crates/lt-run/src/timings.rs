//! `timings.json`: where the wall time of `lt-cli run` went.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// One phase of a pipeline and its wall time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// What ran: `loading`, `stage 1`, `stage 2 <head>` or `evaluation`.
    pub name: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The time breakdown of the last `lt-cli run` (`timings.json`): phases in
/// the order they ran (`loading` once per command of the pipeline, each
/// the opening of the experiment: config, data lists, class statistics),
/// and the total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Phases in the order they ran.
    pub phases: Vec<Phase>,
    /// Wall time of the whole pipeline, in seconds.
    pub total_seconds: f64,
}

impl Timings {
    /// The phases with the same name summed, in the order of their first
    /// appearance (one row per name: the several `loading` phases of a
    /// pipeline become one).
    pub fn merged(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for p in &self.phases {
            match out.iter_mut().find(|q| q.name == p.name) {
                Some(q) => q.seconds += p.seconds,
                None => out.push(p.clone()),
            }
        }
        out
    }

    /// Reads a `timings.json`.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        crate::read_json(path, "timings.json")
    }

    /// Writes a `timings.json` atomically.
    pub fn write(&self, path: &Path) -> Result<(), RunError> {
        crate::write_json(path, "timings.json", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_sums_phases_of_one_name_in_first_order() {
        let p = |name: &str, seconds| Phase {
            name: name.into(),
            seconds,
        };
        let t = Timings {
            phases: vec![
                p("loading", 1.0),
                p("stage 1", 10.0),
                p("loading", 0.5),
                p("stage 2 crt", 2.0),
            ],
            total_seconds: 13.5,
        };
        assert_eq!(
            t.merged(),
            vec![p("loading", 1.5), p("stage 1", 10.0), p("stage 2 crt", 2.0)]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timings.json");
        t.write(&path).unwrap();
        assert_eq!(Timings::read(&path).unwrap(), t);
    }
}
