//! One process per rank over TCP, as a star through rank 0.
//!
//! Rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every other rank connects
//! (retrying until the timeout, since rank 0 may start later) and introduces
//! itself. A collective is one message from every rank to rank 0 (a header
//! with the kind, the sequence number and the length, then the payload) and
//! one answer back. Rank 0 sums in rank order, so every rank receives
//! bit-identical values. Traffic at rank 0 grows with W: this backend is for
//! CPU runs, tests and the NCCL rendezvous; GPUs exchange tensors over NCCL.
//!
//! Every socket has read and write timeouts: a peer that stops answering
//! gives an error naming it after `timeout`, and a peer that dies closes its
//! socket, which the others see at once. Written by hand because no
//! maintained crate offers a small blocking collective over TCP.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{dist_err, Communicator};
use crate::TrainError;

const MAGIC: u32 = 0x4c54_4450; // "LTDP"
const VERSION: u32 = 1;

const OP_SUM: u8 = 1;
const OP_BROADCAST: u8 = 2;
const OP_BARRIER: u8 = 3;
const OP_SUM_F64: u8 = 4;

fn op_name(op: u8) -> &'static str {
    match op {
        OP_SUM => "all_reduce_sum",
        OP_BROADCAST => "broadcast",
        OP_BARRIER => "barrier",
        OP_SUM_F64 => "all_reduce_sum_f64",
        _ => "unknown",
    }
}

#[derive(Debug)]
struct Links {
    /// Rank 0: the stream of rank r at index r - 1. Others: the one stream to
    /// rank 0.
    streams: Vec<TcpStream>,
    seq: u64,
    /// Set by the first failure; every later call returns it.
    failed: Option<String>,
}

/// One rank of a TCP group.
#[derive(Debug)]
pub struct TcpCommunicator {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Mutex<Links>,
}

fn io_context(e: std::io::Error, timeout: Duration, what: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!(
                "{what}: no answer within the timeout of {:.1}s",
                timeout.as_secs_f64()
            )
        }
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => {
            format!("{what}: the connection was closed (the process exited or failed)")
        }
        _ => format!("{what}: {e}"),
    }
}

fn configure(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl TcpCommunicator {
    /// Rank 0: accepts the other `world - 1` ranks on `listener` (waiting at
    /// most `timeout` for all of them).
    pub fn host(
        listener: TcpListener,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, TrainError> {
        if world == 0 {
            return Err(dist_err("world size must be at least 1"));
        }
        let deadline = Instant::now() + timeout;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        listener
            .set_nonblocking(true)
            .map_err(|e| dist_err(format!("rendezvous on {addr}: {e}")))?;
        let mut streams: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while streams.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let bad = |m: String| dist_err(format!("rendezvous on {addr}: {peer}: {m}"));
                    s.set_nonblocking(false).map_err(|e| bad(e.to_string()))?;
                    configure(&s, timeout).map_err(|e| bad(e.to_string()))?;
                    let hello = (|| -> std::io::Result<[u32; 4]> {
                        Ok([
                            read_u32(&mut s)?,
                            read_u32(&mut s)?,
                            read_u32(&mut s)?,
                            read_u32(&mut s)?,
                        ])
                    })()
                    .map_err(|e| bad(io_context(e, timeout, "reading the greeting")))?;
                    let [magic, version, rank, w] = hello;
                    if magic != MAGIC || version != VERSION {
                        return Err(bad("not an lt-train rank (wrong greeting)".into()));
                    }
                    let (rank, w) = (rank as usize, w as usize);
                    if w != world {
                        return Err(bad(format!(
                            "rank {rank} was started with WORLD_SIZE={w}, rank 0 with {world}"
                        )));
                    }
                    if rank == 0 || rank >= world {
                        return Err(bad(format!("rank {rank} is not in 1..{world}")));
                    }
                    if streams[rank - 1].is_some() {
                        return Err(bad(format!("rank {rank} connected twice")));
                    }
                    s.write_all(&[1u8])
                        .map_err(|e| bad(io_context(e, timeout, "answering the greeting")))?;
                    streams[rank - 1] = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> = streams
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| i + 1)
                            .collect();
                        return Err(dist_err(format!(
                            "rendezvous on {addr}: rank(s) {missing:?} did not connect within \
                             {:.1}s",
                            timeout.as_secs_f64()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(dist_err(format!("rendezvous on {addr}: {e}"))),
            }
        }
        Ok(Self {
            rank: 0,
            world,
            timeout,
            links: Mutex::new(Links {
                streams: streams.into_iter().map(|s| s.expect("all set")).collect(),
                seq: 0,
                failed: None,
            }),
        })
    }

    /// Rank `rank` > 0: connects to rank 0 at `addr` (`host:port`), retrying
    /// until `timeout`.
    pub fn join(
        addr: &str,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, TrainError> {
        if rank == 0 || rank >= world {
            return Err(dist_err(format!("rank {rank} is not in 1..{world}")));
        }
        let deadline = Instant::now() + timeout;
        let ctx = |m: String| {
            dist_err(format!(
                "rank {rank}: rendezvous with rank 0 at {addr}: {m}"
            ))
        };
        let mut stream = loop {
            let attempt = addr
                .to_socket_addrs()
                .map_err(|e| ctx(format!("cannot resolve: {e}")))?
                .find_map(|a| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    TcpStream::connect_timeout(&a, left.max(Duration::from_millis(1))).ok()
                });
            if let Some(s) = attempt {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(ctx(format!(
                    "no connection within {:.1}s (is rank 0 running?)",
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        configure(&stream, timeout).map_err(|e| ctx(e.to_string()))?;
        let mut hello = Vec::with_capacity(16);
        for v in [MAGIC, VERSION, rank as u32, world as u32] {
            hello.extend_from_slice(&v.to_le_bytes());
        }
        stream
            .write_all(&hello)
            .map_err(|e| ctx(io_context(e, timeout, "greeting")))?;
        let mut ok = [0u8; 1];
        stream
            .read_exact(&mut ok)
            .map_err(|e| ctx(io_context(e, timeout, "waiting for rank 0 to accept")))?;
        Ok(Self {
            rank,
            world,
            timeout,
            links: Mutex::new(Links {
                streams: vec![stream],
                seq: 0,
                failed: None,
            }),
        })
    }

    /// Rank 0 listens on `addr`, the others connect to it.
    pub fn connect(
        addr: &str,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, TrainError> {
        if rank == 0 {
            let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or(addr);
            // Listen on every interface: MASTER_ADDR names this host as the
            // others reach it, which need not be a local interface's name.
            let bind = format!("0.0.0.0:{port}");
            let listener = TcpListener::bind(&bind)
                .map_err(|e| dist_err(format!("rank 0: cannot listen on {bind}: {e}")))?;
            Self::host(listener, world, timeout)
        } else {
            Self::join(addr, rank, world, timeout)
        }
    }

    /// One collective: every rank sends (op, payload) to rank 0, which
    /// combines them and answers every rank with the result.
    fn exchange(&self, op: u8, payload: Vec<u8>) -> Result<Vec<u8>, TrainError> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = &links.failed {
            return Err(dist_err(format!(
                "rank {}: group already failed: {f}",
                self.rank
            )));
        }
        let seq = links.seq;
        links.seq += 1;
        let what = format!("rank {}: {} #{seq}", self.rank, op_name(op));
        let result = if self.rank == 0 {
            self.exchange_root(&mut links.streams, op, seq, payload)
        } else {
            self.exchange_leaf(&mut links.streams[0], op, seq, payload)
        };
        result.map_err(|m| {
            let msg = format!("{what}: {m}");
            if self.rank == 0 {
                // Rank 0 tells the others why, then closes its side for
                // writing (FIN, so the others fail at once instead of waiting
                // for their own timeout) and reads what they still send until
                // they close: a socket closed with unread data would reset the
                // connection and could destroy the report before they read it.
                for s in links.streams.iter_mut() {
                    let _ = write_msg(s, 0, seq, msg.as_bytes());
                    let _ = s.shutdown(Shutdown::Write);
                }
                let linger = self.timeout.min(Duration::from_secs(5));
                for s in links.streams.iter_mut() {
                    drain(s, linger);
                }
            }
            for s in links.streams.iter_mut() {
                let _ = s.shutdown(Shutdown::Both);
            }
            links.failed = Some(msg.clone());
            dist_err(msg)
        })
    }

    fn exchange_leaf(
        &self,
        s: &mut TcpStream,
        op: u8,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let t = self.timeout;
        if let Err(e) = write_msg(s, op, seq, &payload) {
            // Rank 0 may have failed first and closed: its report of why is
            // then waiting to be read, and names the real cause.
            if let Ok((0, _, data)) = read_msg(s) {
                return Err(format!(
                    "rank 0 reported: {}",
                    String::from_utf8_lossy(&data)
                ));
            }
            return Err(io_context(e, t, "sending to rank 0"));
        }
        let (rop, rseq, data) = read_msg(s).map_err(|e| io_context(e, t, "waiting for rank 0"))?;
        if rop == 0 {
            return Err(format!(
                "rank 0 reported: {}",
                String::from_utf8_lossy(&data)
            ));
        }
        if rop != op || rseq != seq {
            return Err(format!(
                "rank 0 answered {} #{rseq}, expected {} #{seq}",
                op_name(rop),
                op_name(op)
            ));
        }
        Ok(data)
    }

    fn exchange_root(
        &self,
        streams: &mut [TcpStream],
        op: u8,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let t = self.timeout;
        let mut acc = payload;
        let mut first_error = None;
        for (i, s) in streams.iter_mut().enumerate() {
            let r = i + 1;
            let (rop, rseq, data) =
                read_msg(s).map_err(|e| io_context(e, t, &format!("waiting for rank {r}")))?;
            let mismatch = if rop != op || rseq != seq {
                Some(format!(
                    "rank 0 called {} #{seq} but rank {r} called {} #{rseq}",
                    op_name(op),
                    op_name(rop)
                ))
            } else if (op == OP_SUM || op == OP_SUM_F64) && data.len() != acc.len() {
                let size = if op == OP_SUM { 4 } else { 8 };
                Some(format!(
                    "rank 0 reduces {} values but rank {r} reduces {}",
                    acc.len() / size,
                    data.len() / size
                ))
            } else {
                None
            };
            if let Some(m) = mismatch {
                first_error.get_or_insert(m);
                continue;
            }
            if op == OP_SUM {
                for (a, b) in acc.chunks_exact_mut(4).zip(data.chunks_exact(4)) {
                    let v = f32::from_le_bytes(a.try_into().expect("4 bytes"))
                        + f32::from_le_bytes(b.try_into().expect("4 bytes"));
                    a.copy_from_slice(&v.to_le_bytes());
                }
            } else if op == OP_SUM_F64 {
                for (a, b) in acc.chunks_exact_mut(8).zip(data.chunks_exact(8)) {
                    let v = f64::from_le_bytes(a.try_into().expect("8 bytes"))
                        + f64::from_le_bytes(b.try_into().expect("8 bytes"));
                    a.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        if let Some(m) = first_error {
            for s in streams.iter_mut() {
                let _ = write_msg(s, 0, seq, m.as_bytes());
            }
            return Err(m);
        }
        let answer: &[u8] = if op == OP_BARRIER { &[] } else { &acc };
        for (i, s) in streams.iter_mut().enumerate() {
            write_msg(s, op, seq, answer)
                .map_err(|e| io_context(e, t, &format!("answering rank {}", i + 1)))?;
        }
        Ok(acc)
    }
}

/// Reads and discards until the peer closes, an error, or `linger` passes.
fn drain(s: &mut TcpStream, linger: Duration) {
    let deadline = std::time::Instant::now() + linger;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn write_msg(s: &mut TcpStream, op: u8, seq: u64, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 17];
    head[0] = op;
    head[1..9].copy_from_slice(&seq.to_le_bytes());
    head[9..17].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(payload)
}

fn read_msg(s: &mut TcpStream) -> std::io::Result<(u8, u64, Vec<u8>)> {
    let mut head = [0u8; 17];
    s.read_exact(&mut head)?;
    let op = head[0];
    let seq = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(head[9..17].try_into().expect("8 bytes")) as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((op, seq, data))
}

impl Communicator for TcpCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        if self.world == 1 {
            return Ok(());
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(OP_SUM, bytes)?;
        for (v, b) in buf.iter_mut().zip(out.chunks_exact(4)) {
            *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError> {
        if self.world == 1 {
            return Ok(());
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(OP_SUM_F64, bytes)?;
        for (v, b) in buf.iter_mut().zip(out.chunks_exact(8)) {
            *v = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<(), TrainError> {
        if self.world == 1 {
            return Ok(());
        }
        let payload = if self.rank == 0 {
            buf.clone()
        } else {
            Vec::new()
        };
        *buf = self.exchange(OP_BROADCAST, payload)?;
        Ok(())
    }

    fn barrier(&self) -> Result<(), TrainError> {
        if self.world == 1 {
            return Ok(());
        }
        self.exchange(OP_BARRIER, Vec::new()).map(|_| ())
    }
}
