//! Training-step throughput of a backbone + linear head, the same step as the
//! peer script `shared/bench/torch_resnet_step.py`: forward, cross-entropy,
//! backward, SGD (momentum 0.9, weight decay 5e-4) on random data.
//!
//! ```text
//! cargo bench -p lt-models --bench resnet_step -- --model resnet32 --batch 128 \
//!     --threads 2 --steps 10 --warmup 3 [--classes 100] [--size 32] [--profile]
//! ```
//!
//! Prints one JSON line: model, batch, size, threads, `img_per_s_median`,
//! `step_ms` (timed steps), `cpu_ms_median` (process CPU time per step, which
//! other load on the machine barely moves), `peak_rss_mb` (VmHWM) and the
//! load average at the start. `--profile` also prints, to stderr, the median
//! split of a step into forward / backward / optimiser.
//!
//! The network is `lt_models::Backbone` (any `--model` it knows) plus a
//! linear head. `--fused-conv-bn` instead builds the CIFAR ResNet here from
//! `ops::conv2d_batch_norm*_train` (same layers, same step), to measure what
//! fusing each convolution with its batch norm gains.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use lt_models::{Arch, Backbone, BnMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::str::FromStr;
use std::time::Instant;

struct Args {
    model: String,
    batch: usize,
    size: Option<usize>,
    classes: usize,
    threads: usize,
    steps: usize,
    warmup: usize,
    profile: bool,
    fused: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: "resnet32".into(),
        batch: 128,
        size: None,
        classes: 100,
        threads: 2,
        steps: 10,
        warmup: 3,
        profile: false,
        fused: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        let int = |name: &str, v: String| -> usize {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: expected a non-negative integer, got {v:?}"))
        };
        match arg.as_str() {
            "--model" => a.model = value("--model"),
            "--batch" => a.batch = int("--batch", value("--batch")),
            "--size" => a.size = Some(int("--size", value("--size"))),
            "--classes" => a.classes = int("--classes", value("--classes")),
            "--threads" => a.threads = int("--threads", value("--threads")),
            "--steps" => a.steps = int("--steps", value("--steps")),
            "--warmup" => a.warmup = int("--warmup", value("--warmup")),
            "--profile" => a.profile = true,
            "--fused-conv-bn" => a.fused = true,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    assert!(
        a.steps > 0 && a.batch > 0,
        "--steps and --batch must be positive"
    );
    a
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

/// CPU time used so far by all threads of this process, in ms (0 off Linux).
fn process_cpu_ms() -> f64 {
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
            return ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
        }
    }
    0.0
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mb(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// SGD with momentum and weight decay, PyTorch semantics (dampening 0):
/// `g' = g + wd * w; v = mu * v + g'; w -= lr * v`.
struct Sgd {
    params: Vec<(Var, Option<Tensor>)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (w, v) in &mut self.params {
            let Some(g) = grads.get(w.as_tensor()) else {
                continue;
            };
            let g = (g + (w.as_tensor() * self.weight_decay)?)?;
            let nv = match v.take() {
                Some(v) => ((v * self.momentum)? + g)?,
                None => g,
            };
            w.set(&(w.as_tensor() - (&nv * self.lr)?)?)?;
            *v = Some(nv);
        }
        Ok(())
    }
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], std: f32) -> Result<Tensor> {
    let normal = Normal::new(0.0f32, std).expect("valid normal");
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A CIFAR ResNet (3 stages of 16/32/64, 1x1 projection shortcuts, global
/// average pool) written with the fused conv + BN entry points, with the
/// running statistics updated as `BatchNorm2d` does.
struct FusedCifarResNet {
    stem: ConvBn,
    blocks: Vec<(ConvBn, ConvBn, Option<ConvBn>)>,
}

struct ConvBn {
    w: Var,
    gamma: Var,
    beta: Var,
    running: (Var, Var),
    p: lt_models::ops::Conv2dParams,
}

impl ConvBn {
    fn new(rng: &mut ChaCha8Rng, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Self> {
        let std = (2.0 / (k * k * cout) as f32).sqrt();
        let dev = Device::Cpu;
        Ok(Self {
            w: Var::from_tensor(&randn(rng, &[cout, cin, k, k], std)?)?,
            gamma: Var::from_tensor(&Tensor::ones(cout, DType::F32, &dev)?)?,
            beta: Var::from_tensor(&Tensor::zeros(cout, DType::F32, &dev)?)?,
            running: (
                Var::from_tensor(&Tensor::zeros(cout, DType::F32, &dev)?)?,
                Var::from_tensor(&Tensor::ones(cout, DType::F32, &dev)?)?,
            ),
            p: lt_models::ops::Conv2dParams {
                stride,
                padding: k / 2,
                groups: 1,
            },
        })
    }

    fn vars(&self) -> [Var; 3] {
        [self.w.clone(), self.gamma.clone(), self.beta.clone()]
    }

    /// `relu?(bn(conv(x)) (+ residual))`, updating the running statistics.
    fn forward(&self, x: &Tensor, relu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
        use lt_models::ops;
        let (w, g, b) = (
            self.w.as_tensor(),
            self.gamma.as_tensor(),
            self.beta.as_tensor(),
        );
        let eps = lt_models::BN_EPS;
        let (y, mean, var) = match (residual, relu) {
            (Some(r), _) => ops::conv2d_batch_norm_add_relu_train(x, w, self.p, r, g, b, eps)?,
            (None, true) => ops::conv2d_batch_norm_relu_train(x, w, self.p, g, b, eps)?,
            (None, false) => ops::conv2d_batch_norm_train(x, w, self.p, g, b, eps)?,
        };
        let (n, _, h, wd) = y.dims4()?;
        let count = (n * h * wd) as f64;
        let m = lt_models::BN_MOMENTUM;
        let (rm, rv) = &self.running;
        rm.set(&((rm.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        rv.set(&((rv.as_tensor() * (1.0 - m))? + (var * (m * count / (count - 1.0)))?)?)?;
        Ok(y)
    }
}

impl FusedCifarResNet {
    fn new(depth: usize, rng: &mut ChaCha8Rng) -> Result<Self> {
        let per_stage = (depth - 2) / 6;
        let stem = ConvBn::new(rng, 3, 16, 3, 1)?;
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (stage, &width) in [16, 32, 64].iter().enumerate() {
            for i in 0..per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let c1 = ConvBn::new(rng, cin, width, 3, stride)?;
                let c2 = ConvBn::new(rng, width, width, 3, 1)?;
                let sc = (stride != 1 || cin != width)
                    .then(|| ConvBn::new(rng, cin, width, 1, stride))
                    .transpose()?;
                blocks.push((c1, c2, sc));
                cin = width;
            }
        }
        Ok(Self { stem, blocks })
    }

    fn vars(&self) -> Vec<Var> {
        let mut v = self.stem.vars().to_vec();
        for (c1, c2, sc) in &self.blocks {
            v.extend(c1.vars());
            v.extend(c2.vars());
            if let Some(sc) = sc {
                v.extend(sc.vars());
            }
        }
        v
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x, true, None)?;
        for (c1, c2, sc) in &self.blocks {
            let h = c1.forward(&x, true, None)?;
            let shortcut = match sc {
                Some(sc) => sc.forward(&x, false, None)?,
                None => x.clone(),
            };
            x = c2.forward(&h, true, Some(&shortcut))?;
        }
        x.mean((2, 3))
    }
}

fn main() -> Result<()> {
    let args = parse_args();
    // candle's matmul reads its thread count from RAYON_NUM_THREADS. Its
    // elementwise ops run on a separate spin-waiting pool sized by
    // CANDLE_NUM_THREADS; next to the kernels' rayon pool that pool only
    // oversubscribes the cores (measured: ~25% of the step's CPU time went
    // to its spin loops), so it is kept to the calling thread unless the
    // environment says otherwise. Set here, before any other thread exists.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .expect("rayon pool");
    let load = load_average();
    let arch = Arch::from_str(&args.model).unwrap_or_else(|e| panic!("--model: {e}"));
    let size = args.size.unwrap_or(
        if args.model.starts_with("resnet")
            && matches!(
                args.model.as_str(),
                "resnet8" | "resnet20" | "resnet32" | "resnet56"
            )
        {
            32
        } else {
            224
        },
    );
    let dev = Device::Cpu;
    let backbone = Backbone::new(arch, &dev, 0).map_err(candle_core::Error::wrap)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let fused = if args.fused {
        let depth = match arch {
            Arch::ResNet8 => 8,
            Arch::ResNet20 => 20,
            Arch::ResNet32 => 32,
            Arch::ResNet56 => 56,
            _ => panic!("--fused-conv-bn: only the CIFAR ResNets (resnet8/20/32/56)"),
        };
        Some(FusedCifarResNet::new(depth, &mut rng)?)
    } else {
        None
    };
    let d = backbone.feature_dim();
    let bound = 1.0 / (d as f32).sqrt();
    let fc_w = Var::from_tensor(&randn(&mut rng, &[args.classes, d], bound)?)?;
    let fc_b = Var::from_tensor(&Tensor::zeros(args.classes, DType::F32, &dev)?)?;
    let mut params: Vec<(Var, Option<Tensor>)> = match &fused {
        Some(net) => net.vars().into_iter().map(|v| (v, None)).collect(),
        None => backbone
            .parameters()
            .into_iter()
            .map(|(_, v)| (v, None))
            .collect(),
    };
    params.push((fc_w.clone(), None));
    params.push((fc_b.clone(), None));
    let mut sgd = Sgd {
        params,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
    };

    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let mut split: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..args.warmup + args.steps {
        let x = randn(&mut rng, &[args.batch, 3, size, size], 1.0)?;
        let labels: Vec<u32> = (0..args.batch)
            .map(|_| rng.random_range(0..args.classes as u32))
            .collect();
        let y = Tensor::from_vec(labels, args.batch, &dev)?;
        let (c0, t0) = (process_cpu_ms(), Instant::now());
        let feats = match &fused {
            Some(net) => net.forward(&x)?,
            None => backbone
                .forward_t(&x, BnMode::Train)
                .map_err(candle_core::Error::wrap)?,
        };
        let logits = feats
            .matmul(&fc_w.as_tensor().t()?)?
            .broadcast_add(fc_b.as_tensor())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        sgd.step(&grads)?;
        drop(grads);
        let t3 = Instant::now();
        if i >= args.warmup {
            wall.push((t3 - t0).as_secs_f64() * 1e3);
            cpu.push(process_cpu_ms() - c0);
            split[0].push((t1 - t0).as_secs_f64() * 1e3);
            split[1].push((t2 - t1).as_secs_f64() * 1e3);
            split[2].push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    let med = median(&wall);
    if args.profile {
        eprintln!(
            "median ms: forward {:.1}, backward {:.1}, sgd {:.1}",
            median(&split[0]),
            median(&split[1]),
            median(&split[2])
        );
    }
    let steps: Vec<String> = wall.iter().map(|t| format!("{t:.1}")).collect();
    println!(
        "{{\"model\": \"{}\", \"batch\": {}, \"size\": {size}, \"threads\": {}, \"framework\": \"lt-models{}\", \"img_per_s_median\": {:.1}, \"step_ms\": [{}], \"cpu_ms_median\": {:.1}, \"peak_rss_mb\": {:.0}, \"loadavg\": \"{load}\"}}",
        args.model,
        args.batch,
        args.threads,
        if args.fused { " (fused conv+bn)" } else { "" },
        args.batch as f64 / med * 1e3,
        steps.join(", "),
        median(&cpu),
        status_mb("VmHWM:").unwrap_or(f64::NAN),
    );
    Ok(())
}
