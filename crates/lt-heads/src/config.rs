//! Serde configuration enums for choosing and parameterising heads from TOML.
//!
//! Every enum is written in `snake_case` and defaults to the reference
//! (Kang et al., official code) behaviour.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A name that is not one of a setting's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`, expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    /// The setting (`NcmDistance`, ...).
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names it takes.
    pub expected: &'static [&'static str],
}

/// Implements `as_str`, `Display` and `FromStr` from one table of names so the
/// three never disagree with the serde names.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The `snake_case` name used in TOML, JSON and file metadata.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(UnknownName {
                        what: stringify!($ty),
                        name: other.to_string(),
                        expected: &[$($name),+],
                    }),
                }
            }
        }
    };
}

/// Feature transform of the NCM head (`ncm_feat`), applied to the training
/// features before averaging and to every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NcmFeature {
    /// Raw features.
    Un,
    /// L2-normalised features `f / ||f||`.
    L2n,
    /// Centred by the instance-weighted mean of all training features, then
    /// L2-normalised: `(f - mu) / ||f - mu||` (reference default).
    #[default]
    Cl2n,
}
named_enum!(NcmFeature { Un => "un", L2n => "l2n", Cl2n => "cl2n" });

/// Score of the NCM head (`ncm_dist`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NcmDistance {
    /// Negative squared Euclidean distance `-||x - c_j||^2` (reference default).
    #[default]
    L2,
    /// Scaled dot product `x . c_j / d` as the reference code computes it. This is
    /// **not** a true cosine: centroids are not re-normalised after averaging, so
    /// their norms differ by class.
    Cos,
}
named_enum!(NcmDistance { L2 => "l2", Cos => "cos" });

/// How the cRT head starts (`crt_head_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrtInit {
    /// Freshly initialised like a PyTorch `nn.Linear` (reference: the stage-1 fc is
    /// deliberately not loaded).
    #[default]
    Reinit,
    /// Start from a copy of the stage-1 joint head (MiSLAS-style fine-tuning).
    Finetune,
}
named_enum!(CrtInit { Reinit => "reinit", Finetune => "finetune" });

/// Configuration of the NCM head. Both fields default to the reference
/// (`cl2n` + `l2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NcmConfig {
    /// Feature transform (`ncm_feat`).
    pub feature: NcmFeature,
    /// Score (`ncm_dist`).
    pub distance: NcmDistance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference() {
        assert_eq!(NcmFeature::default(), NcmFeature::Cl2n);
        assert_eq!(NcmDistance::default(), NcmDistance::L2);
        assert_eq!(CrtInit::default(), CrtInit::Reinit);
    }

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for &f in NcmFeature::ALL {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.as_str()));
            assert_eq!(f.as_str().parse::<NcmFeature>().unwrap(), f);
        }
        let err = "cosine".parse::<NcmDistance>().unwrap_err().to_string();
        assert!(err.contains("l2, cos"), "{err}");
    }

    #[test]
    fn ncm_config_from_toml() {
        #[derive(Deserialize)]
        struct Doc {
            ncm: NcmConfig,
            tau_bias: lt_core::TauBias,
            crt_head_init: CrtInit,
        }
        let doc: Doc = toml::from_str(
            "tau_bias = \"keep\"\ncrt_head_init = \"finetune\"\n[ncm]\nfeature = \"l2n\"\n",
        )
        .unwrap();
        assert_eq!(doc.ncm.feature, NcmFeature::L2n);
        assert_eq!(doc.ncm.distance, NcmDistance::L2);
        assert_eq!(doc.tau_bias, lt_core::TauBias::Keep);
        assert_eq!(doc.crt_head_init, CrtInit::Finetune);
        let bad = toml::from_str::<NcmConfig>("feature = \"l3n\"").unwrap_err();
        assert!(bad.to_string().contains("l3n"), "{bad}");
        let unknown = toml::from_str::<NcmConfig>("feat = \"l2n\"").unwrap_err();
        assert!(unknown.to_string().contains("feat"), "{unknown}");
    }
}
