//! Data parallelism without a GPU: the collectives of the in-process and TCP
//! backends, failure behaviour, SyncBN against one big batch, and W ranks
//! against one process with the W-times batch.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use lt_models::{Arch, BatchNorm2d, BnMode};
use lt_train::dist::{Communicator, Dist, DistConfig, InProcess, TcpCommunicator};
use lt_train::model::Network;
use lt_train::optim::{SgdConfig, SgdMomentum};
use lt_train::TrainError;

/// Runs `f(rank, comm)` on one thread per rank and returns the results in
/// rank order.
fn on_ranks<C, T, F>(comms: Vec<C>, f: F) -> Vec<T>
where
    C: Communicator + 'static,
    T: Send + 'static,
    F: Fn(Arc<dyn Communicator>) -> T + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let f = f.clone();
            std::thread::spawn(move || f(Arc::new(c)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A TCP group of `world` ranks on a free local port, connected in threads.
fn tcp_group(world: usize, timeout: Duration) -> Vec<TcpCommunicator> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let joiners: Vec<_> = (1..world)
        .map(|r| {
            let addr = addr.clone();
            std::thread::spawn(move || TcpCommunicator::join(&addr, r, world, timeout).unwrap())
        })
        .collect();
    let mut all = vec![TcpCommunicator::host(listener, world, timeout).unwrap()];
    all.extend(joiners.into_iter().map(|h| h.join().unwrap()));
    all
}

/// Every collective on every rank: sums, broadcasts of different lengths,
/// barriers, many rounds in a row.
fn check_collectives(comm: Arc<dyn Communicator>) -> Vec<f32> {
    let (r, w) = (comm.rank(), comm.world_size());
    let mut last = Vec::new();
    for round in 0..20 {
        let mut v: Vec<f32> = (0..1000).map(|i| (r * 1000 + i + round) as f32).collect();
        comm.all_reduce_sum(&mut v).unwrap();
        for (i, x) in v.iter().enumerate() {
            let expected: usize = (0..w).map(|q| q * 1000 + i + round).sum();
            assert_eq!(*x, expected as f32, "rank {r} round {round} index {i}");
        }
        let mut msg = if r == 0 {
            vec![round as u8; round * 7]
        } else {
            vec![9; 3]
        };
        comm.broadcast_bytes(&mut msg).unwrap();
        assert_eq!(msg, vec![round as u8; round * 7], "rank {r}");
        comm.barrier().unwrap();
        let t = Tensor::new(&[[r as f32, 1.0], [2.0, 3.0]], &Device::Cpu).unwrap();
        let s = comm.all_reduce_tensor(&t).unwrap();
        last = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    }
    last
}

#[test]
fn in_process_collectives_are_correct() {
    let out = on_ranks(
        InProcess::group(3, Duration::from_secs(30)),
        check_collectives,
    );
    for v in out {
        assert_eq!(v, vec![3.0, 3.0, 6.0, 9.0]);
    }
}

#[test]
fn tcp_collectives_are_correct() {
    let out = on_ranks(tcp_group(3, Duration::from_secs(30)), check_collectives);
    for v in out {
        assert_eq!(v, vec![3.0, 3.0, 6.0, 9.0]);
    }
}

#[test]
fn mismatched_collectives_are_errors_not_garbage() {
    for comms in [
        InProcess::group(2, Duration::from_secs(10))
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect::<Vec<_>>(),
        tcp_group(2, Duration::from_secs(10))
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect(),
    ] {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let mut v = vec![1f32; 3 + c.rank()];
                    c.all_reduce_sum(&mut v).map(|_| v)
                })
            })
            .collect();
        for h in handles {
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("reduces 3 values but rank 1 reduces 4"), "{e}");
        }
    }
}

/// Rank 1 leaves (returns, dropping its communicator) after two collectives;
/// rank 0 and 2 must fail at their third with an error naming the problem,
/// long before the timeout.
fn dead_rank_fails_fast(comms: Vec<Box<dyn Communicator>>, expect: &str) {
    let started = Instant::now();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || -> Result<(), TrainError> {
                for step in 0..3 {
                    if c.rank() == 1 && step == 2 {
                        return Ok(()); // dies
                    }
                    let mut v = vec![1f32; 4];
                    c.all_reduce_sum(&mut v)?;
                }
                Ok(())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results[1].is_ok());
    for r in [0, 2] {
        // Every survivor names the rank that left, not each other.
        let e = results[r].as_ref().unwrap_err().to_string();
        assert!(e.contains(expect), "rank {r}: {e}");
        assert!(e.contains("#2"), "names the collective: {e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_dead_rank_makes_the_others_fail_fast() {
    let t = Duration::from_secs(60);
    dead_rank_fails_fast(
        InProcess::group(3, t)
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect(),
        "rank 1 left the group",
    );
    dead_rank_fails_fast(
        tcp_group(3, t)
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect(),
        "rank 1",
    );
}

#[test]
fn a_stuck_rank_gives_a_timeout_error_not_a_hang() {
    let t = Duration::from_millis(600);
    for comms in [
        InProcess::group(2, t)
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect::<Vec<_>>(),
        tcp_group(2, t)
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect(),
    ] {
        let started = Instant::now();
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    if c.rank() == 1 {
                        // Alive (the connection stays open) but never joins.
                        std::thread::sleep(Duration::from_secs(3));
                        return None;
                    }
                    Some(c.barrier().unwrap_err().to_string())
                })
            })
            .collect();
        let e = handles.into_iter().next().unwrap().join().unwrap().unwrap();
        let waited = started.elapsed();
        assert!(
            e.contains("timed out") || e.contains("within the timeout"),
            "{e}"
        );
        assert!(e.contains("rank"), "{e}");
        assert!(waited < Duration::from_millis(2500), "{waited:?}");
    }
}

#[test]
fn tcp_rendezvous_refuses_a_wrong_world_size_and_times_out_alone() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let joiner = std::thread::spawn(move || {
        TcpCommunicator::join(&addr, 1, 3, Duration::from_secs(5)).unwrap_err()
    });
    let e = TcpCommunicator::host(listener, 2, Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("WORLD_SIZE=3"), "{e}");
    let _ = joiner.join();
    // Nobody listening: a clear error after the timeout.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let e = TcpCommunicator::join(&free, 1, 2, Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is rank 0 running"), "{e}");
}

/// Deterministic inputs without candle's RNG.
fn wave(shape: (usize, usize, usize, usize), phase: f32) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.37 + phase).sin() * 1.7 + (i % 7) as f32 * 0.1)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Output, input gradient, γ and β gradients, running mean and variance.
type BnOutcome = (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor);

/// A trained-looking scale and shift (not the initial 1 and 0).
fn set_affine(bn: &BatchNorm2d) {
    let dev = Device::Cpu;
    bn.weight()
        .set(&Tensor::new(&[1.3f32, 0.7, -0.4, 2.0], &dev).unwrap())
        .unwrap();
    bn.bias()
        .set(&Tensor::new(&[0.2f32, -0.5, 0.1, 0.0], &dev).unwrap())
        .unwrap();
}

#[test]
fn sync_bn_equals_one_bn_over_the_concatenated_batch() {
    const W: usize = 3;
    let x = wave((6, 4, 3, 5), 0.3);
    let coef = wave((6, 4, 3, 5), 1.1);
    // One process, the whole batch: loss = sum(relu(bn(x) + r) * coef).
    let residual = wave((6, 4, 3, 5), 2.0);
    let reference = {
        let bn = BatchNorm2d::new("bn", 4, &Device::Cpu).unwrap();
        set_affine(&bn);
        let xv = Var::from_tensor(&x).unwrap();
        let y = bn
            .forward_add_relu_t(xv.as_tensor(), &residual, BnMode::Train)
            .unwrap();
        let grads = (&y * &coef).unwrap().sum_all().unwrap().backward().unwrap();
        (
            y,
            grads.get(xv.as_tensor()).unwrap().clone(),
            grads.get(bn.weight().as_tensor()).unwrap().clone(),
            grads.get(bn.bias().as_tensor()).unwrap().clone(),
            bn.running_mean().as_tensor().clone(),
            bn.running_var().as_tensor().clone(),
        )
    };
    let (x2, c2, r2) = (x.clone(), coef.clone(), residual.clone());
    let per_rank = on_ranks(InProcess::group(W, Duration::from_secs(30)), move |comm| {
        let r = comm.rank();
        let rows = |t: &Tensor| t.narrow(0, 2 * r, 2).unwrap();
        let dist = Dist::new(
            comm,
            DistConfig {
                sync_bn: true,
                ..DistConfig::default()
            },
        );
        let _guard = dist.sync_bn().expect("sync_bn on, 3 ranks");
        let bn = BatchNorm2d::new("bn", 4, &Device::Cpu).unwrap();
        set_affine(&bn);
        let xv = Var::from_tensor(&rows(&x2)).unwrap();
        let y = bn
            .forward_add_relu_t(xv.as_tensor(), &rows(&r2), BnMode::Train)
            .unwrap();
        let grads = (&y * rows(&c2))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (
            y,
            grads.get(xv.as_tensor()).unwrap().clone(),
            grads.get(bn.weight().as_tensor()).unwrap().clone(),
            grads.get(bn.bias().as_tensor()).unwrap().clone(),
            bn.running_mean().as_tensor().clone(),
            bn.running_var().as_tensor().clone(),
        )
    });
    let cat = |f: fn(&BnOutcome) -> Tensor| {
        Tensor::cat(&per_rank.iter().map(f).collect::<Vec<_>>(), 0).unwrap()
    };
    let sum = |f: fn(&BnOutcome) -> Tensor| {
        per_rank
            .iter()
            .map(f)
            .reduce(|a, b| (a + b).unwrap())
            .unwrap()
    };
    assert!(
        max_diff(&cat(|p| p.0.clone()), &reference.0) < 1e-5,
        "forward"
    );
    assert!(max_diff(&cat(|p| p.1.clone()), &reference.1) < 1e-5, "d/dx");
    // Each rank's gamma / beta gradient is its part of the sum.
    assert!(
        max_diff(&sum(|p| p.2.clone()), &reference.2) < 1e-4,
        "d/dgamma"
    );
    assert!(
        max_diff(&sum(|p| p.3.clone()), &reference.3) < 1e-4,
        "d/dbeta"
    );
    for p in &per_rank {
        assert!(max_diff(&p.4, &reference.4) < 1e-6, "running mean");
        assert!(max_diff(&p.5, &reference.5) < 1e-5, "running var");
    }
    // Without SyncBN each rank normalises with its own two samples.
    let bn = BatchNorm2d::new("bn", 4, &Device::Cpu).unwrap();
    let own = bn
        .forward_add_relu_t(
            &x.narrow(0, 0, 2).unwrap(),
            &residual.narrow(0, 0, 2).unwrap(),
            BnMode::Train,
        )
        .unwrap();
    assert!(max_diff(&own, &reference.0.narrow(0, 0, 2).unwrap()) > 1e-2);
}

const CLASSES: usize = 4;
const BATCH: usize = 8;
const STEPS: usize = 3;

fn batch(step: usize) -> (Tensor, Tensor) {
    let x = wave((BATCH, 3, 16, 16), step as f32 * 0.7);
    let y: Vec<u32> = (0..BATCH)
        .map(|i| ((i * 3 + step) % CLASSES) as u32)
        .collect();
    (x, Tensor::new(y.as_slice(), &Device::Cpu).unwrap())
}

fn sgd() -> SgdConfig {
    SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    }
}

/// Trainable parameters after `STEPS` steps, and the gradients of the first.
type Outcome = (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>);

/// `STEPS` SGD steps of ResNet-8 + linear head. `slices`: for each optimiser
/// step, the row slices (start, length) whose gradients are averaged (one
/// slice = one big batch; W slices = W per-rank batches one after the other).
fn sequential(slices: &[(usize, usize)]) -> Outcome {
    let net = Network::new(Arch::ResNet8, CLASSES, 11, &Device::Cpu).unwrap();
    let params = net.trainable(None).unwrap();
    let mut opt = SgdMomentum::new(params.clone(), sgd()).unwrap();
    let mut first = BTreeMap::new();
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let mut avg: BTreeMap<String, Tensor> = BTreeMap::new();
        for s in slices {
            let logits = net
                .logits(&x.narrow(0, s.0, s.1).unwrap(), BnMode::Train)
                .unwrap();
            let loss =
                candle_nn::loss::cross_entropy(&logits, &y.narrow(0, s.0, s.1).unwrap()).unwrap();
            let g = loss.backward().unwrap();
            for (name, v) in &params {
                let gi = (g.get(v.as_tensor()).unwrap() / slices.len() as f64).unwrap();
                let e = avg
                    .entry(name.clone())
                    .or_insert_with(|| gi.zeros_like().unwrap());
                *e = (&*e + gi).unwrap();
            }
        }
        let mut store = candle_core::backprop::GradStore::default();
        for (name, v) in &params {
            store.insert(v.as_tensor(), avg[name].clone());
        }
        if step == 0 {
            first = avg.clone();
        }
        opt.step(&store).unwrap();
    }
    let w = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    (w, first)
}

/// The same with `W` ranks as threads, each on its slice of every batch.
fn data_parallel(world: usize, sync_bn: bool) -> Vec<Outcome> {
    on_ranks(
        InProcess::group(world, Duration::from_secs(60)),
        move |comm| {
            let r = comm.rank();
            let dist = Dist::new(
                comm,
                DistConfig {
                    sync_bn,
                    bucket_mb: 0.05, // several buckets even for ResNet-8
                    ..DistConfig::default()
                },
            );
            let _guard = dist.sync_bn();
            let net = Network::new(Arch::ResNet8, CLASSES, 11, &Device::Cpu).unwrap();
            let params = net.trainable(None).unwrap();
            let mut opt = SgdMomentum::new(params.clone(), sgd()).unwrap();
            let local = BATCH / world;
            let mut first = BTreeMap::new();
            for step in 0..STEPS {
                let (x, y) = batch(step);
                let logits = net
                    .logits(&x.narrow(0, r * local, local).unwrap(), BnMode::Train)
                    .unwrap();
                let loss = candle_nn::loss::cross_entropy(
                    &logits,
                    &y.narrow(0, r * local, local).unwrap(),
                )
                .unwrap();
                let mut grads = loss.backward().unwrap();
                dist.average_gradients(&mut grads, opt.params()).unwrap();
                if step == 0 {
                    first = params
                        .iter()
                        .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
                        .collect();
                }
                opt.step(&grads).unwrap();
            }
            let w = params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            (w, first)
        },
    )
}

fn worst(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| (max_diff(t, &b[k]), k.clone()))
        .fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m })
}

#[test]
fn ranks_with_sync_bn_match_one_process_with_the_whole_batch() {
    let (w1, g1) = sequential(&[(0, BATCH)]);
    for world in [2, 4] {
        let ranks = data_parallel(world, true);
        // Every rank holds bit-identical weights.
        for (r, (w, _)) in ranks.iter().enumerate().skip(1) {
            assert_eq!(worst(w, &ranks[0].0).0, 0.0, "rank {r} drifted");
        }
        let (gd, gk) = worst(&ranks[0].1, &g1);
        assert!(
            gd < 2e-5,
            "W={world}: averaged gradient of {gk} off by {gd}"
        );
        // After three steps at lr 0.1 with momentum, a rounding difference
        // in the first steps can flip a ReLU or a pooling tie and move a
        // weight by a few 1e-4: on an AVX-512 Intel Xeon (gemm's blocking
        // follows the caches) W = 2 ends 3.8e-4 from one process on
        // `conv1.weight`, W = 4 1.3e-7, while per-rank BN (what this test
        // tells apart from SyncBN) ends 0.05-0.07 away. The first step's
        // gradients, above, are the tight check.
        let (wd, wk) = worst(&ranks[0].0, &w1);
        assert!(
            wd < 1e-3,
            "W={world}: weight {wk} off by {wd} after {STEPS} steps"
        );
    }
}

#[test]
fn per_rank_bn_is_the_average_of_per_slice_gradients() {
    let (w1, _) = sequential(&[(0, BATCH)]);
    let (w_split, g_split) = sequential(&[(0, 4), (4, 4)]);
    let ranks = data_parallel(2, false);
    let (gd, gk) = worst(&ranks[0].1, &g_split);
    assert!(gd < 2e-5, "gradient of {gk} off by {gd}");
    let (wd, wk) = worst(&ranks[0].0, &w_split);
    assert!(wd < 1e-4, "weight {wk} off by {wd}");
    // ... which is not the big-batch result: BN statistics of 4 samples.
    let (far, _) = worst(&ranks[0].0, &w1);
    assert!(
        far > 1e-3,
        "per-rank BN should differ from one batch, got {far}"
    );
}
