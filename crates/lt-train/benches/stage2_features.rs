//! Stage 2 on cached features, timed: cRT and LWS trained the way
//! `stage2::retrain` trains them on cached features (the head's default
//! settings, sampler, loss, optimiser and schedule; every step's loss read
//! back and its hits counted; the validation set evaluated after every
//! epoch), and a tau-norm sweep evaluated as `heads::sweep_tau` does it.
//!
//! ```text
//! cargo bench -p lt-train --bench stage2_features -- [--threads 2] [--rounds 3]
//! ```
//!
//! Shapes of CIFAR-100-LT (imbalance 100): 10,847 training features of
//! dimension 64 over 100 classes (500 down to 5 per class), 10,000
//! validation / test features; a 21-value tau grid (0, 0.1, ..., 2), each
//! value scored on the 10,000 features. The features are synthetic (a
//! seeded class mean plus noise), so the heads learn something. What is not
//! timed here: the checkpoint `retrain` writes after every epoch and the
//! feature extraction itself.
//!
//! Prints one JSON line per task with the median over `--rounds` of its wall
//! time and of the process's CPU time (user + system, all threads; less
//! moved by other load on the machine than wall time), in seconds.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lt_core::stats::{ClassStats, GroupRule};
use lt_core::TauBias;
use lt_heads::{tau_grid, LinearHead, TauNormHead};
use lt_samplers::{Sampler, SamplerConfig};
use lt_train::eval::{evaluate_head, Features};
use lt_train::heads::{self, HeadInit};
use lt_train::loss::LossContext;
use lt_train::optim::SgdMomentum;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const DIM: usize = 64;
const CLASSES: usize = 100;
const EVAL_ROWS: usize = 10_000;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// CIFAR-100-LT counts at imbalance 100: `floor(500 * 0.01^(c / 99))`.
fn lt_counts() -> Vec<usize> {
    (0..CLASSES)
        .map(|c| (500.0 * 0.01f64.powf(c as f64 / (CLASSES - 1) as f64)) as usize)
        .collect()
}

/// Features `(N, DIM)`: the class mean plus unit noise, labels in order.
fn features(labels: Vec<u32>, means: &[f32], rng: &mut ChaCha8Rng) -> Res<Features> {
    let noise = Normal::new(0.0f32, 1.0).expect("valid normal");
    let mut v = Vec::with_capacity(labels.len() * DIM);
    for &y in &labels {
        let m = &means[y as usize * DIM..(y as usize + 1) * DIM];
        v.extend(m.iter().map(|&m| (m + noise.sample(rng)).max(0.0)));
    }
    let n = labels.len();
    Ok(Features {
        features: Tensor::from_vec(v, (n, DIM), &Device::Cpu)?,
        labels,
    })
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[cfg(target_os = "linux")]
extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU time used so far by all threads of this process, in s (0 off Linux).
fn process_cpu_s() -> f64 {
    #[cfg(target_os = "linux")]
    {
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on
        // 64-bit Linux), and the clock id is a constant the kernel knows.
        if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
        }
    }
    0.0
}

struct Data {
    train: Features,
    val: Features,
    stats: ClassStats,
    joint: LinearHead,
    _joint_vars: VarMap,
}

/// Trains the registry's head `name` as `retrain` does on cached features;
/// returns the last validation top-1.
fn train_head(d: &Data, name: &str) -> Res<f64> {
    let method = heads::lookup(name)?;
    let training = method.training().ok_or("not a trained head")?;
    let spec = training.default_settings();
    let options = training.default_options();
    let rule = GroupRule::default();
    let groups = d.stats.groups(&rule);
    let vars = VarMap::new();
    let head = training.init(&HeadInit {
        joint: &d.joint,
        vars: &vars,
        options: &options,
        seed: 1,
        class_counts: d.stats.counts(),
        groups: &groups,
    })?;
    let mut opt = SgdMomentum::new(head.trainable(), spec.sgd())?;
    for (var, scale) in training.lr_scales(&options)? {
        opt.set_lr_scale(&var, scale)?;
    }
    let mut sampler = Sampler::new(
        &d.train.labels,
        CLASSES,
        SamplerConfig {
            strategy: spec.sampler.clone(),
            batch_size: spec.batch_size,
            epoch_length: spec.epoch_length,
            seed: 2,
            rank: 0,
            world_size: 1,
            shuffle_in_batch: spec.shuffle_in_batch,
        },
    )?;
    let schedule = spec
        .schedule
        .build(spec.lr, spec.epochs, sampler.num_batches())?;
    let loss_fn = spec.loss.build(&LossContext {
        class_counts: d.stats.counts(),
        epochs: spec.epochs,
        cosine_scale: None,
    })?;
    let mut top1 = 0.0;
    for epoch in 0..spec.epochs {
        let (mut loss_sum, mut hits) = (0f64, 0f64);
        for (i, b) in sampler.next_epoch().iter().enumerate() {
            opt.set_lr(schedule.lr(epoch, i));
            let idx: Vec<u32> = b.iter().map(|&j| j as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
            let input = d.train.features.index_select(&idx, 0)?;
            let labels: Vec<u32> = b.iter().map(|&j| d.train.labels[j]).collect();
            let labels = Tensor::new(labels.as_slice(), &Device::Cpu)?;
            let logits = head.logits(&input)?;
            let loss = loss_fn.forward(&logits, &labels, epoch)?;
            loss_sum += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            opt.step(&grads)?;
            let predicted = logits.detach().argmax(1)?;
            hits += f64::from(
                predicted
                    .eq(&labels)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?,
            );
        }
        let (e, _) = evaluate_head(head.as_ref(), &d.val, CLASSES, &d.stats, &rule)?;
        top1 = e.top1;
        std::hint::black_box((loss_sum, hits));
    }
    Ok(top1)
}

/// The tau-norm sweep over the default 21-value grid, each value scored on
/// the 10,000 evaluation features; returns the best top-1.
fn tau_sweep(d: &Data) -> Res<f64> {
    let rule = GroupRule::default();
    let mut best = 0f64;
    for tau in tau_grid() {
        let head = TauNormHead::from_linear(&d.joint, tau, TauBias::Drop)?;
        let (e, _) = evaluate_head(&head, &d.val, CLASSES, &d.stats, &rule)?;
        best = best.max(e.top1);
    }
    Ok(best)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let (mut threads, mut rounds) = (2usize, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().ok_or("--threads N")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let counts = lt_counts();
    let means: Vec<f32> = {
        let n = Normal::new(0.0f32, 1.0).expect("valid normal");
        (0..CLASSES * DIM).map(|_| n.sample(&mut rng)).collect()
    };
    let train_labels: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &k)| std::iter::repeat_n(c as u32, k))
        .collect();
    let val_labels: Vec<u32> = (0..EVAL_ROWS).map(|i| (i % CLASSES) as u32).collect();
    let joint_vars = VarMap::new();
    let data = Data {
        train: features(train_labels, &means, &mut rng)?,
        val: features(val_labels, &means, &mut rng)?,
        stats: ClassStats::from_counts(counts),
        joint: LinearHead::new(&joint_vars, "fc", DIM, CLASSES, 3, &Device::Cpu)?,
        _joint_vars: joint_vars,
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    type Task<'a> = (&'a str, Box<dyn Fn(&Data) -> Res<f64> + 'a>, f64);
    let tasks: Vec<Task<'_>> = vec![
        ("crt", Box::new(|d| train_head(d, "crt")), 5.0),
        ("lws", Box::new(|d| train_head(d, "lws")), 5.0),
        ("tau_sweep", Box::new(tau_sweep), 0.5),
    ];
    for (name, run, goal) in &tasks {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let mut top1 = 0.0;
        for _ in 0..rounds.max(1) {
            let (c0, t0) = (process_cpu_s(), Instant::now());
            top1 = run(&data)?;
            wall.push(t0.elapsed().as_secs_f64());
            cpu.push(process_cpu_s() - c0);
        }
        println!(
            "{{\"task\": \"{name}\", \"train_rows\": {}, \"eval_rows\": {EVAL_ROWS}, \"dim\": {DIM}, \"threads\": {threads}, \"wall_s_median\": {:.3}, \"cpu_s_median\": {:.3}, \"goal_s\": {goal}, \"top1\": {top1:.4}, \"loadavg\": \"{load}\"}}",
            data.train.labels.len(),
            median(&mut wall),
            median(&mut cpu),
        );
    }
    Ok(())
}
