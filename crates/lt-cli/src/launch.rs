//! `--nproc-per-node N`: runs the same command as N processes, one rank
//! each, the way `torchrun` does.
//!
//! Each child gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
//! `MASTER_PORT`; on several machines run the launcher once per machine with
//! `NNODES` and `NODE_RANK` set (and `MASTER_ADDR` / `MASTER_PORT` naming
//! node 0), or start every rank yourself with the five variables. The
//! launcher waits for its children; when one fails it stops the others and
//! reports which rank failed and how.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Set in the children, so that they run their rank instead of launching.
pub const CHILD_ENV: &str = "LT_LAUNCHED_RANK";

/// Where this machine's ranks sit in the whole group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Processes on this machine.
    pub nproc_per_node: usize,
    /// Machines (`NNODES`, default 1).
    pub nnodes: usize,
    /// This machine (`NODE_RANK`, default 0).
    pub node_rank: usize,
    /// `MASTER_ADDR` (default `127.0.0.1`).
    pub master_addr: String,
    /// `MASTER_PORT` (default: a free local port on one machine).
    pub master_port: u16,
}

impl Plan {
    /// The plan for `nproc_per_node` ranks here, from the environment
    /// (through `get`).
    pub fn new(nproc_per_node: usize, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if nproc_per_node == 0 {
            bail!("--nproc-per-node must be at least 1");
        }
        let num = |name: &str, default: usize| -> Result<usize> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a non-negative integer")),
            }
        };
        let nnodes = num("NNODES", 1)?;
        let node_rank = num("NODE_RANK", 0)?;
        if nnodes == 0 || node_rank >= nnodes {
            bail!("NODE_RANK={node_rank} must be below NNODES={nnodes}");
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match get("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse()
                .with_context(|| format!("MASTER_PORT={p:?} is not a port number"))?,
            None if nnodes == 1 => free_port()?,
            None => bail!("MASTER_PORT must be set when NNODES > 1 (the same on every machine)"),
        };
        Ok(Self {
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
        })
    }

    /// Total number of ranks.
    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    /// `(name, value)` of the variables of local rank `local`.
    pub fn child_env(&self, local: usize) -> Vec<(&'static str, String)> {
        vec![
            (
                "RANK",
                (self.node_rank * self.nproc_per_node + local).to_string(),
            ),
            ("WORLD_SIZE", self.world_size().to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
            (CHILD_ENV, local.to_string()),
        ]
    }
}

/// A port nobody listens on right now (rank 0 binds it a moment later).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("ended with {status}"),
    }
}

/// Runs `program args` once per local rank and waits. Ok when every rank
/// succeeded; otherwise the others are killed and the error names the first
/// rank that failed.
pub fn launch(program: &Path, args: &[OsString], plan: &Plan) -> Result<()> {
    tracing::info!(
        nproc_per_node = plan.nproc_per_node,
        world_size = plan.world_size(),
        node_rank = plan.node_rank,
        master = %format!("{}:{}", plan.master_addr, plan.master_port),
        "launching ranks"
    );
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(plan.nproc_per_node);
    for local in 0..plan.nproc_per_node {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(plan.child_env(local));
        match cmd.spawn() {
            Ok(c) => children.push((local, c)),
            Err(e) => {
                stop(&mut children);
                bail!("starting rank {local} ({}): {e}", program.display());
            }
        }
    }
    let first_rank = plan.node_rank * plan.nproc_per_node;
    let mut running = children.len();
    loop {
        for i in 0..children.len() {
            let (local, child) = &mut children[i];
            let local = *local;
            let status = match child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    stop(&mut children);
                    bail!("waiting for rank {}: {e}", first_rank + local);
                }
            };
            let pid = child.id();
            children.swap_remove(i);
            running -= 1;
            if !status.success() {
                let killed = children.len();
                stop(&mut children);
                bail!(
                    "rank {} (local rank {local}, pid {pid}) {}; stopped the other {killed} \
                     rank(s) of this machine (its own error is printed above)",
                    first_rank + local,
                    describe(status)
                );
            }
            break;
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps every child still running.
fn stop(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> Plan {
        Plan::new(n, |k| (k == "MASTER_PORT").then(|| "1".to_string())).unwrap()
    }

    #[test]
    fn env_of_each_rank() {
        let p = Plan::new(4, |k| match k {
            "NNODES" => Some("2".into()),
            "NODE_RANK" => Some("1".into()),
            "MASTER_PORT" => Some("2345".into()),
            "MASTER_ADDR" => Some("node0".into()),
            _ => None,
        })
        .unwrap();
        let env = p.child_env(3);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("RANK"), "7");
        assert_eq!(get("WORLD_SIZE"), "8");
        assert_eq!(get("LOCAL_RANK"), "3");
        assert_eq!(get("MASTER_ADDR"), "node0");
        assert_eq!(get("MASTER_PORT"), "2345");
        let e = Plan::new(2, |k| (k == "NNODES").then(|| "2".to_string())).unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
        let e = Plan::new(2, |k| (k == "NODE_RANK").then(|| "1".to_string())).unwrap_err();
        assert!(e.to_string().contains("NODE_RANK=1"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        let sh = Path::new("/bin/sh");
        // Rank 1 fails at once; rank 0 and 2 would run for a minute.
        let script = "if [ \"$RANK\" = 1 ]; then exit 7; fi; sleep 60";
        let args = ["-c".into(), script.into()];
        let started = std::time::Instant::now();
        let e = launch(sh, &args, &plan(3)).unwrap_err().to_string();
        assert!(e.contains("rank 1 ") && e.contains("status 7"), "{e}");
        assert!(e.contains("stopped the other 2"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        // All succeed: Ok.
        let ok = ["-c".into(), "test \"$WORLD_SIZE\" = 2".into()];
        launch(sh, &ok, &plan(2)).unwrap();
        // A rank killed by a signal is reported as such.
        let killed = [
            "-c".into(),
            "if [ \"$RANK\" = 0 ]; then kill -9 $$; fi; sleep 60".into(),
        ];
        let e = launch(sh, &killed, &plan(2)).unwrap_err().to_string();
        assert!(e.contains("rank 0 ") && e.contains("signal 9"), "{e}");
    }
}
