//! NCCL: tensors are summed on the GPUs; the unique id, byte broadcasts and
//! barriers go over the TCP group of the rendezvous.
//!
//! NCCL calls are asynchronous and a dead peer makes them wait forever, so
//! every device collective is followed by a stream synchronisation watched
//! by a watchdog thread: past the timeout it logs which collective was stuck
//! and ends the process (as PyTorch's NCCL watchdog does), and the launcher
//! then stops the other ranks. The communicator uses candle's own stream, so
//! the all-reduce is ordered after the kernels that produced the gradients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};

use super::{dist_err, Communicator, TcpCommunicator};
use crate::TrainError;

/// `Comm` holds a raw NCCL handle and is neither `Send` nor `Sync`.
struct CommCell(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls
// on it are not concurrent (NCCL user guide, "Thread safety"); it is only
// reached through the `Mutex` in `NcclCommunicator`.
unsafe impl Send for CommCell {}

/// Ends the process when a device collective outlives the timeout.
#[derive(Debug)]
struct Watchdog {
    armed: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start(rank: usize) -> Self {
        let armed: Arc<Mutex<Option<(Instant, String)>>> = Arc::default();
        let watched = Arc::downgrade(&armed);
        let spawned = std::thread::Builder::new()
            .name(format!("nccl-watchdog-{rank}"))
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                let Some(armed) = watched.upgrade() else {
                    return; // communicator dropped
                };
                let state = armed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some((deadline, what)) = state {
                    if Instant::now() > deadline {
                        let msg = format!(
                            "distributed: rank {rank}: {what} did not complete within the \
                             timeout (a peer died or hangs); exiting"
                        );
                        tracing::error!("{msg}");
                        eprintln!("error: {msg}");
                        std::process::exit(3);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the NCCL watchdog: {e}; a dead peer may hang this rank");
        }
        Self { armed }
    }

    fn arm(&self, timeout: Duration, what: String) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + timeout, what));
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One rank of an NCCL group (one process per GPU).
pub struct NcclCommunicator {
    tcp: TcpCommunicator,
    comm: Mutex<CommCell>,
    device: CudaDevice,
    timeout: Duration,
    watchdog: Watchdog,
    seq: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.tcp.rank())
            .field("world_size", &self.tcp.world_size())
            .finish_non_exhaustive()
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> TrainError {
    dist_err(format!("{what}: NCCL error {e:?}"))
}

impl NcclCommunicator {
    /// Creates the NCCL communicator of this rank on `device` (a CUDA
    /// device): rank 0 makes the unique id and sends it over `tcp`.
    pub fn new(
        tcp: TcpCommunicator,
        device: &Device,
        timeout: Duration,
    ) -> Result<Self, TrainError> {
        let Device::Cuda(dev) = device else {
            return Err(dist_err("NCCL needs a CUDA device"));
        };
        let (rank, world) = (tcp.rank(), tcp.world_size());
        let mut id_bytes: Vec<u8> = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("creating the unique id", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        tcp.broadcast_bytes(&mut id_bytes)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if id_bytes.len() != internal.len() {
            return Err(dist_err(format!(
                "rank {rank}: received an NCCL id of {} bytes, expected 128",
                id_bytes.len()
            )));
        }
        for (d, s) in internal.iter_mut().zip(&id_bytes) {
            *d = *s as std::ffi::c_char;
        }
        let watchdog = Watchdog::start(rank);
        watchdog.arm(timeout, "NCCL initialisation".into());
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, Id::uninit(internal))
            .map_err(|e| nccl_err(&format!("rank {rank}: initialising NCCL"), e));
        watchdog.disarm();
        Ok(Self {
            tcp,
            comm: Mutex::new(CommCell(comm?)),
            device: dev.clone(),
            timeout,
            watchdog,
            seq: Default::default(),
        })
    }

    /// Sums a CUDA tensor across ranks into a new tensor: in f64 for f64
    /// tensors, in f32 otherwise.
    fn all_reduce_device(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        if t.dtype() == DType::F64 {
            self.reduce_as::<f64>(t, DType::F64)
        } else {
            self.reduce_as::<f32>(t, DType::F32)
        }
    }

    fn reduce_as<T>(&self, t: &Tensor, dtype: DType) -> Result<Tensor, TrainError>
    where
        T: NcclType + CudaDType + DeviceRepr + ValidAsZeroBits,
    {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = format!("NCCL all-reduce #{seq} ({} values)", t.elem_count());
        let src = t.detach().to_dtype(dtype)?.contiguous()?;
        let n = src.elem_count();
        let stream = self.device.cuda_stream();
        let mut out = stream
            .alloc_zeros::<T>(n)
            .map_err(|e| dist_err(format!("{what}: allocating: {e:?}")))?;
        {
            let (storage, layout) = src.storage_and_layout();
            let Storage::Cuda(cs) = &*storage else {
                return Err(dist_err(format!("{what}: tensor is not on the GPU")));
            };
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| dist_err(format!("{what}: not contiguous")))?;
            let slice = cs.as_cuda_slice::<T>()?;
            let view = slice.slice(start..end);
            let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
            comm.0
                .all_reduce(&view, &mut out, &ReduceOp::Sum)
                .map_err(|e| nccl_err(&what, e))?;
        }
        self.watchdog.arm(self.timeout, what.clone());
        let synced = stream.synchronize();
        self.watchdog.disarm();
        synced.map_err(|e| dist_err(format!("{what}: {e:?}")))?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, self.device.clone()));
        let summed = Tensor::from_storage(storage, t.shape(), BackpropOp::none(), false);
        Ok(summed.to_dtype(t.dtype())?)
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world_size(&self) -> usize {
        self.tcp.world_size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        let t = Tensor::from_slice(buf, buf.len(), &Device::Cuda(self.device.clone()))?;
        let v = self.all_reduce_device(&t)?.to_vec1::<f32>()?;
        buf.copy_from_slice(&v);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError> {
        let t = Tensor::from_slice(buf, buf.len(), &Device::Cuda(self.device.clone()))?;
        let v = self.all_reduce_device(&t)?.to_vec1::<f64>()?;
        buf.copy_from_slice(&v);
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<(), TrainError> {
        self.tcp.broadcast_bytes(buf)
    }

    fn barrier(&self) -> Result<(), TrainError> {
        self.tcp.barrier()
    }

    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        if t.device().is_cuda() {
            self.all_reduce_device(t)
        } else {
            // Host tensors (none in a CUDA run) go over the TCP group.
            self.tcp.all_reduce_tensor(t)
        }
    }
}
