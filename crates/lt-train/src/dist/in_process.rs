//! W ranks as threads of one process, for tests and examples.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{dist_err, Communicator};
use crate::TrainError;

/// What one rank hands to a collective.
#[derive(Debug, Clone)]
enum Payload {
    Sum(Vec<f32>),
    SumF64(Vec<f64>),
    Broadcast(Vec<u8>),
    Barrier,
}

impl Payload {
    fn kind(&self) -> &'static str {
        match self {
            Payload::Sum(_) => "all_reduce_sum",
            Payload::SumF64(_) => "all_reduce_sum_f64",
            Payload::Broadcast(_) => "broadcast",
            Payload::Barrier => "barrier",
        }
    }
}

#[derive(Debug)]
struct Outcome {
    result: Result<Arc<Payload>, String>,
    /// Ranks that have not yet taken the outcome.
    readers_left: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Deposits for the collective in progress, by rank.
    slots: Vec<Option<(u64, Payload)>>,
    /// Finished collectives, by sequence number, until every rank took them.
    outcomes: HashMap<u64, Outcome>,
    /// Ranks whose handle was dropped.
    departed: Vec<bool>,
    /// The first failure (a departed peer, a timeout): reported by every
    /// later wait, so all ranks name the cause, not each other.
    failed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// One rank of an in-process group; create the group with
/// [`InProcess::group`] and move each handle to its own thread.
///
/// Dropping a handle marks the rank as gone: ranks waiting for it fail at
/// once with an error naming it, the way a closed socket ends a TCP group.
#[derive(Debug)]
pub struct InProcess {
    rank: usize,
    seq: std::sync::atomic::AtomicU64,
    shared: Arc<Shared>,
}

impl InProcess {
    /// `world` connected ranks; every collective waits at most `timeout` for
    /// the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                slots: vec![None; world],
                outcomes: HashMap::new(),
                departed: vec![false; world],
                failed: None,
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                seq: Default::default(),
                shared: shared.clone(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking rank poisons the lock; the state is still consistent
        // (every update is a single assignment), so keep going.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn collective(&self, payload: Payload) -> Result<Arc<Payload>, TrainError> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = payload.kind();
        let world = self.shared.world;
        let deadline = Instant::now() + self.shared.timeout;
        let mut st = self.lock();
        st.slots[self.rank] = Some((seq, payload));
        if st
            .slots
            .iter()
            .all(|s| matches!(s, Some((q, _)) if *q == seq))
        {
            let deposits: Vec<Payload> = st
                .slots
                .iter_mut()
                .map(|s| s.take().expect("checked above").1)
                .collect();
            let result = reduce(deposits);
            st.outcomes.insert(
                seq,
                Outcome {
                    result: result.map(Arc::new),
                    readers_left: world,
                },
            );
            self.shared.cv.notify_all();
        }
        loop {
            if let Some(o) = st.outcomes.get_mut(&seq) {
                let r = o.result.clone();
                o.readers_left -= 1;
                if o.readers_left == 0 {
                    st.outcomes.remove(&seq);
                }
                return r.map_err(|e| dist_err(format!("rank {}: {kind} #{seq}: {e}", self.rank)));
            }
            if let Some(cause) = &st.failed {
                let msg = format!("rank {}: {kind} #{seq}: group failed: {cause}", self.rank);
                st.slots[self.rank] = None;
                return Err(dist_err(msg));
            }
            let missing: Vec<usize> = (0..world)
                .filter(|&r| !matches!(st.slots[r], Some((q, _)) if q == seq))
                .collect();
            let now = Instant::now();
            let cause = if let Some(&gone) = missing.iter().find(|&&r| st.departed[r]) {
                Some(format!("rank {gone} left the group"))
            } else if now >= deadline {
                Some(format!(
                    "timed out after {:.1}s waiting for rank(s) {missing:?}",
                    self.shared.timeout.as_secs_f64()
                ))
            } else {
                None
            };
            if let Some(cause) = cause {
                let msg = format!("rank {}: {kind} #{seq}: {cause}", self.rank);
                st.slots[self.rank] = None;
                st.failed = Some(format!("{kind} #{seq}: {cause}"));
                self.shared.cv.notify_all();
                return Err(dist_err(msg));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Combines the deposits of one collective, in rank order.
fn reduce(deposits: Vec<Payload>) -> Result<Payload, String> {
    let kind = deposits[0].kind();
    if let Some((r, p)) = deposits.iter().enumerate().find(|(_, p)| p.kind() != kind) {
        return Err(format!(
            "rank 0 called {kind} but rank {r} called {}",
            p.kind()
        ));
    }
    match &deposits[0] {
        Payload::Sum(first) => {
            let mut acc = first.clone();
            for (r, p) in deposits.iter().enumerate().skip(1) {
                let Payload::Sum(v) = p else { unreachable!() };
                if v.len() != acc.len() {
                    return Err(format!(
                        "rank 0 reduces {} values but rank {r} reduces {}",
                        acc.len(),
                        v.len()
                    ));
                }
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            Ok(Payload::Sum(acc))
        }
        Payload::SumF64(first) => {
            let mut acc = first.clone();
            for (r, p) in deposits.iter().enumerate().skip(1) {
                let Payload::SumF64(v) = p else {
                    unreachable!()
                };
                if v.len() != acc.len() {
                    return Err(format!(
                        "rank 0 reduces {} values but rank {r} reduces {}",
                        acc.len(),
                        v.len()
                    ));
                }
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            Ok(Payload::SumF64(acc))
        }
        Payload::Broadcast(b) => Ok(Payload::Broadcast(b.clone())),
        Payload::Barrier => Ok(Payload::Barrier),
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.departed[self.rank] = true;
        self.shared.cv.notify_all();
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        let out = self.collective(Payload::Sum(buf.to_vec()))?;
        let Payload::Sum(v) = &*out else {
            unreachable!("checked in reduce")
        };
        buf.copy_from_slice(v);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError> {
        let out = self.collective(Payload::SumF64(buf.to_vec()))?;
        let Payload::SumF64(v) = &*out else {
            unreachable!("checked in reduce")
        };
        buf.copy_from_slice(v);
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<(), TrainError> {
        let out = self.collective(Payload::Broadcast(std::mem::take(buf)))?;
        let Payload::Broadcast(v) = &*out else {
            unreachable!("checked in reduce")
        };
        buf.clone_from(v);
        Ok(())
    }

    fn barrier(&self) -> Result<(), TrainError> {
        self.collective(Payload::Barrier).map(|_| ())
    }
}
