//! Which instruction sets the CPU kernels use: the best the CPU reports,
//! unless [`set_max_isa`] capped it.
//!
//! The cap exists to measure, on one machine, what a machine with less
//! would run: `set_max_isa(Isa::Avx2)` on an AVX-512 CPU takes the paths an
//! AVX2-only CPU takes (the direct and Winograd convolutions decline, the
//! elementwise loops run eight lanes wide). The `gemm` crate picks its
//! micro-kernel by itself; it uses AVX-512 only when lt-models is built with
//! the `avx512-gemm` feature (on by default), so an AVX2 measurement builds
//! without it (`compare_with_torch.sh` with `ISA=avx2` does both).
//!
//! Every path gives the same results up to the summation order of the
//! kernels that differ (see [`set_winograd`](super::set_winograd)); the
//! elementwise reductions are bit-identical across paths.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// An x86-64 instruction-set level, in increasing order. Written as its
/// [`name`](Isa::name) in configs (`model.max_isa`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// SSE2 only: what the workspace is compiled for.
    Baseline,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

impl Isa {
    const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// The name [`FromStr`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An instruction-set name that is not one of `baseline`, `avx2`, `avx512`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instruction set {0:?}: expected baseline, avx2 or avx512")]
pub struct UnknownIsa(pub String);

impl FromStr for Isa {
    type Err = UnknownIsa;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| UnknownIsa(s.to_owned()))
    }
}

/// The cap as `Isa as u8`; `u8::MAX` for none.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the instruction sets the kernels use for the whole process
/// (`Isa::Avx512` lifts the cap). Takes effect at the next kernel call.
pub fn set_max_isa(isa: Isa) {
    CAP.store(isa as u8, Ordering::Relaxed);
}

/// The best level the CPU reports.
pub fn detected_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // std caches the CPUID answers, so this is a few loads.
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The level the kernels use: the detected one, capped by [`set_max_isa`].
pub fn active_isa() -> Isa {
    capped(detected_isa(), CAP.load(Ordering::Relaxed))
}

/// `detected`, lowered to the cap stored as `cap` (`u8::MAX`: none).
fn capped(detected: Isa, cap: u8) -> Isa {
    match Isa::ALL.get(usize::from(cap)) {
        Some(&c) if c < detected => c,
        _ => detected,
    }
}

/// Whether the AVX-512 kernels may run.
#[inline]
pub(crate) fn avx512() -> bool {
    active_isa() >= Isa::Avx512
}

/// Whether the AVX2 + FMA loops may run.
#[inline]
pub(crate) fn avx2() -> bool {
    active_isa() >= Isa::Avx2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
        }
        let err = "avx3".parse::<Isa>().unwrap_err();
        assert!(err.to_string().contains("\"avx3\""), "{err}");
    }

    #[test]
    fn the_cap_lowers_the_level_but_never_raises_it() {
        // The pure function, not the process-wide cap: other tests run
        // kernels in this process meanwhile.
        for detected in Isa::ALL {
            assert_eq!(capped(detected, u8::MAX), detected);
            for cap in Isa::ALL {
                assert_eq!(capped(detected, cap as u8), detected.min(cap));
            }
        }
    }
}
