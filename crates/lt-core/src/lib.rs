//! lt-core: the vocabulary every crate of the workspace speaks, without candle.
//!
//! | module | what |
//! |---|---|
//! | [`stats`] | per-class training counts, the many / medium / few grouping rules |
//! | [`split`] | the named splits of an experiment (`train`, `val`, `test`) |
//! | [`head`] | [`HeadId`]: the name of a classifier head (`joint`, `crt`, ...) |
//! | [`stage`] | [`Stage`]: the name of a training stage (`stage1` or a trained head) |
//! | [`fs`] | atomic file writes and SHA-256 hashing |
//! | [`classes`] | class names (`classes.txt`) |
//!
//! Keeping these here lets the data, metrics, report and sweep crates agree on
//! names without depending on the training crate (and on candle).
//!
//! ```
//! use lt_core::{HeadId, Split, Stage};
//! use lt_core::stats::{ClassStats, GroupRule};
//!
//! let stats = ClassStats::from_counts(vec![500, 60, 5]);
//! assert_eq!(stats.group_sizes(&GroupRule::default()), [1, 1, 1]);
//! let crt: HeadId = "crt".parse().unwrap();
//! assert_eq!(Stage::Head(crt.clone()).as_str(), "crt");
//! assert_eq!(Stage::Stage1.to_string(), "stage1");
//! assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
//! assert!("Bad Name".parse::<HeadId>().is_err());
//! ```
#![warn(missing_docs)]

pub mod classes;
pub mod fs;
pub mod head;
pub mod split;
pub mod stage;
pub mod stats;

/// An error and its sources, joined with `: ` (what `anyhow` prints with
/// `{:#}`): the whole story of a failure in one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub use head::{HeadId, TauBias, TauSelect};
pub use split::Split;
pub use stage::{ModelSelect, Stage};
