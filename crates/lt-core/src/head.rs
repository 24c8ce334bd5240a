//! Head identifiers.
//!
//! A head is named by a [`HeadId`]: a short `snake_case` word (`joint`, `ncm`,
//! `tau_norm`, `crt`, `lws`, ...) used on the command line (`--head crt`), as
//! the config section of a trained head (`[stage2.crt]`), as its stage name in
//! checkpoints and `metrics.jsonl`, and in `results.json`. The identifier is a
//! validated name, not a closed enum: the set of heads is the training crate's
//! registry (`lt_train::heads::registry`), so adding a head never edits this
//! crate. Readers that only need names and labels (reports, sweeps) take them
//! from `results.json`, where each head's label is recorded.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name of a classifier head (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadId(Cow<'static, str>);

/// A string that cannot name a head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a head name: use lower-case letters, digits and `_`, starting with a letter")]
pub struct BadHeadId(pub String);

fn valid(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl HeadId {
    /// A head name known at compile time (the registry's own names).
    ///
    /// # Panics
    /// If `name` is not a valid head name: a programming error in a head
    /// definition, caught by the registry's tests.
    pub const fn new_static(name: &'static str) -> Self {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b[0].is_ascii_lowercase(),
            "a head name starts with a lower-case letter"
        );
        let mut i = 1;
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_',
                "a head name holds lower-case letters, digits and `_` only"
            );
            i += 1;
        }
        HeadId(Cow::Borrowed(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HeadId {
    type Err = BadHeadId;
    fn from_str(s: &str) -> Result<Self, BadHeadId> {
        // `tau-norm` is how people type it on a command line.
        let s = s.replace('-', "_");
        if valid(&s) {
            Ok(HeadId(Cow::Owned(s)))
        } else {
            Err(BadHeadId(s))
        }
    }
}

impl AsRef<str> for HeadId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for HeadId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HeadId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for HeadId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HeadId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What tau-normalisation does with the bias of the joint head (`eval.tau_bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TauBias {
    /// Drop the bias, as the reference `tau_norm.py` does (so tau = 0 is *not*
    /// the joint head).
    #[default]
    Drop,
    /// Keep the unscaled bias (BagofTricks-LT).
    Keep,
}

impl TauBias {
    /// The name used in TOML and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TauBias::Drop => "drop",
            TauBias::Keep => "keep",
        }
    }
}

impl fmt::Display for TauBias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a head's tau (tau-norm, post-hoc logit adjustment) is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TauSelect {
    /// Sweep the grid and keep the best tau on the selection split (reference).
    #[default]
    SweepOnVal,
    /// Use the configured tau.
    Fixed,
}

impl TauSelect {
    /// The name used in TOML and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TauSelect::SweepOnVal => "sweep_on_val",
            TauSelect::Fixed => "fixed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_dashes_accepted() {
        assert_eq!("tau-norm".parse::<HeadId>().unwrap(), "tau_norm");
        assert_eq!("crt".parse::<HeadId>().unwrap(), HeadId::new_static("crt"));
        for bad in ["", "Crt", "1x", "a b", "é"] {
            assert!(bad.parse::<HeadId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&HeadId::new_static("lws")).unwrap();
        assert_eq!(json, "\"lws\"");
        assert!(serde_json::from_str::<HeadId>("\"No\"").is_err());
        assert_eq!(HeadId::new_static("ok_2").as_str(), "ok_2");
    }

    #[test]
    #[should_panic(expected = "lower-case")]
    fn a_bad_static_name_is_a_programming_error() {
        let _ = HeadId::new_static("Not");
    }
}
