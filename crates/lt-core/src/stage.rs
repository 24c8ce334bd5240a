//! Training stages.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::head::{BadHeadId, HeadId};

/// A training stage: stage 1 (backbone and joint head), or the training of a
/// stage-2 head, named after the head (`crt`, `lws`, ...). Its name keys the
/// stage's checkpoints (`checkpoints/<stage>_last.safetensors`) and its lines
/// of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Joint training of the backbone and the linear head.
    Stage1,
    /// Training of a stage-2 head on the frozen stage-1 representation.
    Head(HeadId),
}

impl Stage {
    /// The name of stage 1.
    pub const STAGE1: &'static str = "stage1";

    /// `stage1`, or the head's name.
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Stage1 => Self::STAGE1,
            Stage::Head(h) => h.as_str(),
        }
    }

    /// The head trained in this stage, if a stage-2 one.
    pub fn head(&self) -> Option<&HeadId> {
        match self {
            Stage::Stage1 => None,
            Stage::Head(h) => Some(h),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = BadHeadId;
    fn from_str(s: &str) -> Result<Self, BadHeadId> {
        if s == Self::STAGE1 {
            Ok(Stage::Stage1)
        } else {
            s.parse().map(Stage::Head)
        }
    }
}

impl From<HeadId> for Stage {
    fn from(h: HeadId) -> Self {
        Stage::Head(h)
    }
}

impl PartialEq<str> for Stage {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl AsRef<str> for Stage {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for Stage {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which checkpoint of a training stage later stages and evaluation use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSelect {
    /// The epoch with the best validation top-1 (the reference).
    #[default]
    BestVal,
    /// The last epoch.
    Last,
}

impl ModelSelect {
    /// Name as written in configs and results.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSelect::BestVal => "best_val",
            ModelSelect::Last => "last",
        }
    }
}

impl fmt::Display for ModelSelect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names() {
        assert_eq!("stage1".parse::<Stage>().unwrap(), Stage::Stage1);
        let crt: Stage = "crt".parse().unwrap();
        assert_eq!(crt.head().unwrap(), "crt");
        assert_eq!(serde_json::to_string(&crt).unwrap(), "\"crt\"");
        assert_eq!(
            serde_json::from_str::<Stage>("\"stage1\"").unwrap(),
            Stage::Stage1
        );
    }
}
