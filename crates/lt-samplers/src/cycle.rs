//! Reshuffled cycles: a list walked in order and reshuffled at every wrap,
//! the first pass included (the reference's `RandomCycleIter`).
//!
//! Many cycles share one flat buffer split into segments (one per class).
//! The permutation of a segment's pass `p` is drawn from a generator keyed by
//! `(seed, purpose, segment, p)`, always starting from the segment's
//! canonical (ascending) order, so a cycle is fully described by its pass
//! number and position: that pair is all the saved state holds, and restoring
//! rebuilds the permutations exactly.

use serde::{Deserialize, Serialize};

use crate::rng::{derived_rng, shuffle, Purpose};

/// Where one cycle stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CycleState {
    /// Number of reshuffles after the first (0 during the first pass).
    pub(crate) pass: u64,
    /// Position of the next item in the current pass; equal to the segment
    /// length when the pass is used up (the reshuffle happens on the next draw).
    pub(crate) next: usize,
}

/// A set of reshuffled cycles over the segments of one item list.
#[derive(Clone, Debug)]
pub(crate) struct Cycles {
    seed: u64,
    purpose: Purpose,
    /// Segment s is `canonical[offsets[s]..offsets[s + 1]]`.
    offsets: Vec<usize>,
    canonical: Vec<usize>,
    /// The current pass's permutation of every segment.
    current: Vec<usize>,
    states: Vec<CycleState>,
}

impl Cycles {
    /// Starts every cycle at its first pass, shuffled.
    pub(crate) fn new(
        seed: u64,
        purpose: Purpose,
        offsets: Vec<usize>,
        canonical: Vec<usize>,
    ) -> Self {
        let segments = offsets.len() - 1;
        let mut cycles = Self {
            seed,
            purpose,
            current: canonical.clone(),
            offsets,
            canonical,
            states: vec![CycleState { pass: 0, next: 0 }; segments],
        };
        for s in 0..segments {
            cycles.reshuffle(s);
        }
        cycles
    }

    /// The next item of segment `s` (which must be non-empty).
    #[inline]
    pub(crate) fn next(&mut self, s: usize) -> usize {
        let lo = self.offsets[s];
        let len = self.offsets[s + 1] - lo;
        debug_assert!(len > 0, "drawing from an empty cycle");
        if self.states[s].next == len {
            self.states[s].pass += 1;
            self.states[s].next = 0;
            self.reshuffle(s);
        }
        let state = &mut self.states[s];
        let item = self.current[lo + state.next];
        state.next += 1;
        item
    }

    /// Every cycle's state, indexed by segment.
    pub(crate) fn states(&self) -> &[CycleState] {
        &self.states
    }

    /// Checks saved states against the segments without changing anything.
    pub(crate) fn check(&self, states: &[CycleState], what: &str) -> Result<(), String> {
        if states.len() != self.states.len() {
            return Err(format!(
                "{what} holds {} cycles, expected {}",
                states.len(),
                self.states.len()
            ));
        }
        for (s, state) in states.iter().enumerate() {
            let len = self.offsets[s + 1] - self.offsets[s];
            if state.next > len {
                return Err(format!(
                    "{what}[{s}] is at position {} of a cycle of length {len}",
                    state.next
                ));
            }
        }
        Ok(())
    }

    /// Restores saved states (already checked) and rebuilds their permutations.
    pub(crate) fn restore(&mut self, states: &[CycleState]) {
        self.states.copy_from_slice(states);
        for s in 0..self.states.len() {
            self.reshuffle(s);
        }
    }

    /// Rebuilds segment `s`'s permutation for its current pass.
    fn reshuffle(&mut self, s: usize) {
        let (lo, hi) = (self.offsets[s], self.offsets[s + 1]);
        let segment = &mut self.current[lo..hi];
        segment.copy_from_slice(&self.canonical[lo..hi]);
        if segment.len() > 1 {
            let mut rng = derived_rng(self.seed, self.purpose, s as u64, self.states[s].pass);
            shuffle(segment, &mut rng);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_segments() -> Cycles {
        // Segment 0 = {10, 11, 12}, segment 1 = {20, 21}, segment 2 = {30}.
        Cycles::new(
            9,
            Purpose::ClassItems,
            vec![0, 3, 5, 6],
            vec![10, 11, 12, 20, 21, 30],
        )
    }

    #[test]
    fn each_pass_visits_every_item_once() {
        let mut c = two_segments();
        for _ in 0..20 {
            let mut pass: Vec<usize> = (0..3).map(|_| c.next(0)).collect();
            pass.sort_unstable();
            assert_eq!(pass, vec![10, 11, 12]);
        }
        assert_eq!(c.states()[0], CycleState { pass: 19, next: 3 });
        assert_eq!(c.next(2), 30);
        assert_eq!(c.next(2), 30);
    }

    #[test]
    fn passes_are_reshuffled() {
        let mut c = two_segments();
        let passes: Vec<Vec<usize>> = (0..30)
            .map(|_| (0..3).map(|_| c.next(0)).collect())
            .collect();
        let distinct: std::collections::BTreeSet<_> = passes.iter().collect();
        assert!(distinct.len() > 1, "every pass had the same order");
    }

    #[test]
    fn restore_continues_the_stream() {
        let mut a = two_segments();
        for _ in 0..7 {
            a.next(0);
            a.next(1);
        }
        let saved = a.states().to_vec();
        let mut b = two_segments();
        b.check(&saved, "cycles").unwrap();
        b.restore(&saved);
        for _ in 0..25 {
            assert_eq!(a.next(0), b.next(0));
            assert_eq!(a.next(1), b.next(1));
        }
    }

    #[test]
    fn check_rejects_bad_states() {
        let c = two_segments();
        assert!(c.check(&[CycleState { pass: 0, next: 0 }], "x").is_err());
        let bad = vec![
            CycleState { pass: 0, next: 4 },
            CycleState { pass: 0, next: 0 },
            CycleState { pass: 0, next: 0 },
        ];
        assert!(c.check(&bad, "x").unwrap_err().contains("position 4"));
    }
}
