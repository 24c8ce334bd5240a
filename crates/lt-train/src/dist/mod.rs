//! Data-parallel training: one process (or thread) per device, one global
//! sample stream, gradients averaged across ranks after every backward pass.
//!
//! # Pieces
//!
//! * [`Communicator`]: rank, world size and the three collectives the loops
//!   need (element-wise sum of `f32` buffers, broadcast of bytes from rank 0,
//!   barrier). Every collective has a timeout: a dead or stuck peer gives an
//!   error naming the rank and the collective, never a hang.
//! * Backends: [`InProcess`] (W ranks as threads of one process; tests),
//!   [`TcpCommunicator`] (one process per rank, star through rank 0; CPU runs
//!   and the rendezvous of the NCCL backend) and, with the `nccl` feature,
//!   `NcclCommunicator` (device buffers all-reduced by NCCL).
//! * [`Dist`]: a communicator plus the data-parallel settings
//!   ([`DistConfig`]), with the operations of a training step built on it:
//!   [`Dist::average_gradients`] (bucketed all-reduce, divided by W),
//!   [`Dist::broadcast_tensors`] (identical initial weights) and
//!   [`Dist::sync_bn`] (SyncBN through `lt_models::sync_bn`).
//! * [`DistEnv`]: the launch environment (`RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), as `torchrun` sets it.
//!
//! # How a step runs
//!
//! Each rank takes its slice of every global batch from the sampler's
//! distributed mode (batch size B global, B / W per rank), runs forward and
//! backward on it, then the gradients are flattened into buckets of about
//! `dist.bucket_mb` MB, each bucket is summed across ranks, divided by W and
//! unflattened. The mean of the per-rank mean losses is the loss of the global
//! batch, so the averaged gradient equals the single-process gradient of the
//! W-times batch (exactly so when BN statistics are global: `dist.sync_bn`).
//! candle has no backward hooks, so the all-reduce starts after `backward()`
//! returns and does not overlap with it (PyTorch DDP overlaps the two).
//!
//! # What is and is not identical to one process
//!
//! * Sample stream: identical for every world size (lt-samplers' distributed
//!   mode), so a run can resume on another number of ranks.
//! * Gradients: the mean over the global batch, as one process, up to the
//!   order of float sums. BN per rank (the default) normalises each rank's
//!   slice on its own, a different (and the usual DDP) model; `sync_bn`
//!   computes global statistics in f64 with the same composed BN on every
//!   world size, one process included, so results agree across world sizes.
//! * Augmentation: a rank loads its slice of every global batch at the
//!   slice's global epoch position (`Loader::epoch_at`), and the loader keys
//!   a sample's random crop / flip by that position, so every sample is
//!   augmented as in a single-process run, on any number of ranks.
//! * Files: rank 0 alone writes checkpoints (atomically), `metrics.jsonl`,
//!   results and exported features; all ranks read the checkpoints of
//!   earlier stages and `--resume`, so on several machines the run directory
//!   must be on a shared file system.
//! * Evaluation: each rank extracts features of its share of a split and one
//!   all-reduce assembles the whole matrix on every rank (memory: N x d
//!   floats per rank), from which every rank computes the same metrics, NCM
//!   class means and tau sweep.
//! * Failures: every collective waits at most `dist.timeout_s`; a peer that
//!   exits closes its socket and the others stop at once with an error
//!   naming it. On NCCL a watchdog ends a rank whose collective outlives the
//!   timeout (NCCL itself would wait forever).
//!
//! # Example: two ranks as threads
//!
//! ```
//! use lt_train::dist::{Communicator, InProcess};
//! use std::time::Duration;
//!
//! let ranks = InProcess::group(2, Duration::from_secs(10));
//! let handles: Vec<_> = ranks
//!     .into_iter()
//!     .map(|comm| {
//!         std::thread::spawn(move || {
//!             let mut grad = vec![comm.rank() as f32 + 1.0; 3];
//!             comm.all_reduce_sum(&mut grad).unwrap();
//!             let mut msg = if comm.rank() == 0 { b"hello".to_vec() } else { Vec::new() };
//!             comm.broadcast_bytes(&mut msg).unwrap();
//!             comm.barrier().unwrap();
//!             (grad, msg)
//!         })
//!     })
//!     .collect();
//! for h in handles {
//!     let (grad, msg) = h.join().unwrap();
//!     assert_eq!(grad, vec![3.0; 3]); // 1 + 2 on every rank
//!     assert_eq!(msg, b"hello");
//! }
//! ```

mod env;
mod in_process;
#[cfg(feature = "nccl")]
mod nccl;
mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::TrainError;

pub use env::DistEnv;
pub use in_process::InProcess;
#[cfg(feature = "nccl")]
pub use nccl::NcclCommunicator;
pub use tcp::TcpCommunicator;

/// Collective operations across the ranks of one training run.
///
/// Every rank must call the same collectives in the same order with buffers
/// of the same length; a mismatch is reported as an error where the backend
/// can see it (all built-in backends check the kind and length on rank 0).
pub trait Communicator: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `buf` by the element-wise sum of every rank's `buf`. Every
    /// rank receives bit-identical values.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError>;

    /// [`all_reduce_sum`](Self::all_reduce_sum) in f64 (SyncBN statistics,
    /// loss sums and counts).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError>;

    /// Replaces `buf` on every rank by rank 0's `buf` (lengths may differ).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<(), TrainError>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), TrainError>;

    /// [`all_reduce_sum`](Self::all_reduce_sum) of a tensor (any shape;
    /// summed in f64 for f64 tensors, in f32 otherwise). The default goes
    /// through host memory; a device backend overrides it to reduce on the
    /// device.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        if t.dtype() == DType::F64 {
            let mut host = t.detach().flatten_all()?.to_vec1::<f64>()?;
            self.all_reduce_sum_f64(&mut host)?;
            return Ok(Tensor::from_vec(host, t.shape(), t.device())?);
        }
        let mut host = t
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.all_reduce_sum(&mut host)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}

/// A communicator of one rank: world size 1, every collective a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<(), TrainError> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>) -> Result<(), TrainError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        Ok(())
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        Ok(t.detach())
    }
}

/// The `[dist]` section of an experiment config: data-parallel settings that
/// do not depend on the number of ranks (which comes from the launcher).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Synchronised batch norm: BN statistics over the global batch instead
    /// of each rank's slice (off by default, as PyTorch DDP and the
    /// reference runs). Changes the result, so it is part of the stage hash.
    pub sync_bn: bool,
    /// Size of one gradient all-reduce bucket in MB (PyTorch DDP: 25).
    pub bucket_mb: f64,
    /// Seconds a collective may wait for the other ranks before the run
    /// stops with an error naming the missing rank.
    pub timeout_s: f64,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            sync_bn: false,
            bucket_mb: 25.0,
            timeout_s: 600.0,
        }
    }
}

impl DistConfig {
    /// True when every field has its default (the section is then left out of
    /// the saved config, so configs of earlier runs hash as before).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if !(self.bucket_mb > 0.0 && self.bucket_mb.is_finite()) {
            return Err(ConfigError::at(
                "dist.bucket_mb",
                format!("must be > 0, got {}", self.bucket_mb),
            ));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(ConfigError::at(
                "dist.timeout_s",
                format!("must be > 0, got {}", self.timeout_s),
            ));
        }
        Ok(())
    }
}

/// A communicator with the data-parallel settings of a run.
#[derive(Debug, Clone)]
pub struct Dist {
    comm: Arc<dyn Communicator>,
    config: DistConfig,
}

impl Default for Dist {
    fn default() -> Self {
        Self::single()
    }
}

impl Dist {
    /// One rank, nothing to communicate.
    pub fn single() -> Self {
        Self {
            comm: Arc::new(SingleProcess),
            config: DistConfig::default(),
        }
    }

    /// A rank of a data-parallel group.
    pub fn new(comm: Arc<dyn Communicator>, config: DistConfig) -> Self {
        Self { comm, config }
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    /// The settings.
    pub fn config(&self) -> &DistConfig {
        &self.config
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// More than one rank.
    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    /// Rank 0, the only rank that writes files and logs progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Sums the gradients of `params` across ranks and divides them by W, in
    /// buckets of about `bucket_mb` MB (one collective per bucket, not per
    /// tensor). Parameters without a gradient are skipped; every rank must
    /// have gradients for the same parameters (the bucket lengths are checked).
    ///
    /// Runs after `backward()`: candle has no per-tensor backward hooks, so
    /// the communication cannot overlap with the backward pass.
    pub fn average_gradients(
        &self,
        grads: &mut GradStore,
        params: &[(String, Var)],
    ) -> Result<(), TrainError> {
        if !self.is_distributed() {
            return Ok(());
        }
        let w = self.world_size() as f64;
        let limit = ((self.config.bucket_mb * 1e6) as usize / 4).max(1);
        let with_grad: Vec<&Var> = params
            .iter()
            .map(|(_, v)| v)
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .collect();
        let mut start = 0;
        while start < with_grad.len() {
            let mut end = start;
            let mut elems = 0;
            while end < with_grad.len()
                && (end == start || elems + with_grad[end].elem_count() <= limit)
            {
                elems += with_grad[end].elem_count();
                end += 1;
            }
            let bucket = &with_grad[start..end];
            let flat: Vec<Tensor> = bucket
                .iter()
                .map(|v| {
                    let g = grads.get(v.as_tensor()).expect("filtered above");
                    g.detach().to_dtype(DType::F32)?.flatten_all()
                })
                .collect::<candle_core::Result<_>>()?;
            let flat = Tensor::cat(&flat, 0)?;
            let summed = (self.comm.all_reduce_tensor(&flat)? / w)?;
            let mut offset = 0;
            for v in bucket {
                let n = v.elem_count();
                let g = summed
                    .narrow(0, offset, n)?
                    .reshape(v.shape())?
                    .to_dtype(v.dtype())?;
                grads.insert(v.as_tensor(), g);
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    /// Rank 0's tensors on every rank (by name; the names and shapes must
    /// agree). Used at the start of training so every rank starts from
    /// identical weights and optimiser state.
    pub fn broadcast_tensors(
        &self,
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, TrainError> {
        if !self.is_distributed() {
            return Ok(tensors.clone().into_iter().collect());
        }
        // One message: safetensors bytes of rank 0's tensors. Other ranks
        // send nothing and check that they receive what they expect.
        let mut bytes = if self.is_main() {
            let contiguous: Vec<(&str, Tensor)> = tensors
                .iter()
                .map(|(k, t)| Ok((k.as_str(), t.contiguous()?)))
                .collect::<candle_core::Result<_>>()?;
            safetensors::tensor::serialize(contiguous.iter().map(|(k, t)| (*k, t)), None)
                .map_err(|e| TrainError::Dist(format!("broadcast: serialising tensors: {e}")))?
        } else {
            Vec::new()
        };
        self.comm.broadcast_bytes(&mut bytes)?;
        let device = tensors
            .values()
            .next()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone());
        let received = candle_core::safetensors::load_buffer(&bytes, &device)?;
        let mut out = HashMap::with_capacity(received.len());
        for (k, t) in tensors {
            let r = received.get(k).ok_or_else(|| {
                TrainError::Dist(format!(
                    "broadcast: rank 0 has no tensor `{k}` (do all ranks build the same model?)"
                ))
            })?;
            if r.shape() != t.shape() {
                return Err(TrainError::Dist(format!(
                    "broadcast: tensor `{k}` has shape {:?} on rank 0, {:?} on rank {}",
                    r.shape(),
                    t.shape(),
                    self.rank()
                )));
            }
            out.insert(k.clone(), r.to_dtype(t.dtype())?);
        }
        if received.len() != tensors.len() {
            return Err(TrainError::Dist(format!(
                "broadcast: rank 0 sent {} tensors, rank {} has {}",
                received.len(),
                self.rank(),
                tensors.len()
            )));
        }
        Ok(out)
    }

    /// Installs SyncBN on the calling thread when `sync_bn` is on: until the
    /// guard is dropped, every batch norm in training mode normalises with
    /// statistics of the global batch. `None` leaves BN per rank.
    ///
    /// With one rank too: a `sync_bn` run then computes the same thing (the
    /// composed BN of `lt_models::sync_bn`) on any number of ranks, so its
    /// results agree across world sizes to float rounding and it can resume
    /// on another. The fused per-rank kernels agree with it to about 1e-6 per
    /// step, but training amplifies any rounding difference (see the crate's
    /// data-parallel tests), so a mix of the two would not reproduce a run.
    pub fn sync_bn(&self) -> Option<lt_models::sync_bn::SyncBnGuard> {
        if self.config.sync_bn {
            Some(lt_models::sync_bn::install(Arc::new(BnReducer(
                self.comm.clone(),
            ))))
        } else {
            None
        }
    }

    /// Sums small host statistics (loss sums, counts) across ranks.
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
        if !self.is_distributed() {
            return Ok(());
        }
        self.comm.all_reduce_sum_f64(values)
    }

    /// The contiguous slice `[start, end)` of `0..n` this rank handles when a
    /// split is shared out for evaluation or feature extraction.
    pub fn shard(&self, n: usize) -> std::ops::Range<usize> {
        let (r, w) = (self.rank(), self.world_size());
        (r * n / w)..((r + 1) * n / w)
    }
}

/// The communicator as SyncBN's statistics reducer.
#[derive(Debug)]
struct BnReducer(Arc<dyn Communicator>);

impl lt_models::sync_bn::StatReducer for BnReducer {
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        self.0
            .all_reduce_tensor(t)
            .map_err(|e| candle_core::Error::Msg(format!("SyncBN all-reduce: {e}")))
    }
}

/// A timed-out or failed collective, with what was being waited for.
pub(crate) fn dist_err(msg: impl Into<String>) -> TrainError {
    TrainError::Dist(msg.into())
}
