//! The launch environment of one rank, as `torchrun` and `lt-cli train
//! --nproc-per-node` set it.

use std::sync::Arc;

use super::{dist_err, Communicator, DistConfig, TcpCommunicator};
use crate::TrainError;

/// Where this process sits in a data-parallel group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of ranks (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this machine (`LOCAL_RANK`), the GPU index on CUDA.
    pub local_rank: usize,
    /// Host of rank 0 (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of the rendezvous on rank 0 (`MASTER_PORT`).
    pub master_port: u16,
}

impl DistEnv {
    /// Reads the variables through `get` (normally `std::env::var`). `None`
    /// when `WORLD_SIZE` is unset (a plain single-process run); an error
    /// naming the variable when one is missing or malformed.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TrainError> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |name: &str, value: Option<String>| -> Result<usize, TrainError> {
            let v =
                value.ok_or_else(|| dist_err(format!("WORLD_SIZE is set but {name} is not")))?;
            v.trim()
                .parse()
                .map_err(|_| dist_err(format!("{name}={v:?} is not a non-negative integer")))
        };
        let world_size = num("WORLD_SIZE", Some(world))?;
        if world_size == 0 {
            return Err(dist_err("WORLD_SIZE must be at least 1"));
        }
        let rank = num("RANK", get("RANK"))?;
        if rank >= world_size {
            return Err(dist_err(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port
            .trim()
            .parse()
            .map_err(|_| dist_err(format!("MASTER_PORT={port:?} is not a port number")))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }

    /// [`from_vars`](Self::from_vars) on the process environment.
    pub fn from_env() -> Result<Option<Self>, TrainError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    /// The communicator for this rank: TCP on the CPU; with the `nccl`
    /// feature and a CUDA `device`, NCCL (its unique id exchanged over the
    /// TCP rendezvous).
    pub fn connect(
        &self,
        config: &DistConfig,
        device: &candle_core::Device,
    ) -> Result<Arc<dyn Communicator>, TrainError> {
        let tcp =
            TcpCommunicator::connect(&self.master(), self.rank, self.world_size, config.timeout())?;
        if device.is_cuda() {
            #[cfg(feature = "nccl")]
            {
                return Ok(Arc::new(super::NcclCommunicator::new(
                    tcp,
                    device,
                    config.timeout(),
                )?));
            }
            #[cfg(not(feature = "nccl"))]
            {
                tracing::warn!(
                    "this build has no NCCL (`--features nccl`): GPU ranks exchange gradients \
                     through host memory over TCP, which is slow"
                );
            }
        }
        Ok(Arc::new(tcp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_and_rejects_with_the_variable_name() {
        assert_eq!(DistEnv::from_vars(vars(&[])).unwrap(), None);
        let e = DistEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (2, 4, 2));
        assert_eq!(e.master(), "node0:1234");
        let err = DistEnv::from_vars(vars(&[("WORLD_SIZE", "2")])).unwrap_err();
        assert!(err.to_string().contains("RANK"), "{err}");
        let err = DistEnv::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert!(err.to_string().contains("RANK=2"), "{err}");
        let err = DistEnv::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_PORT", "x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("MASTER_PORT"), "{err}");
    }
}
