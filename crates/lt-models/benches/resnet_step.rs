//! Training-step throughput of a backbone + linear head, the same step as the
//! peer script `shared/bench/torch_resnet_step.py`: forward, cross-entropy,
//! backward, SGD (momentum 0.9, weight decay 5e-4) on random data.
//!
//! ```text
//! cargo bench -p lt-models --bench resnet_step -- --model resnet32 --batch 128 \
//!     --threads 2 --steps 10 --warmup 3 [--classes 100] [--size 32] [--profile] \
//!     [--device cpu|cuda:N] [--precision f32|bf16] [--mode train|infer|infer-unfused] \
//!     [--no-winograd] [--no-winograd-f4] [--no-residual-runs] [--max-isa baseline|avx2|avx512] \
//!     [--on-main-thread] [--no-huge-pages]
//! ```
//!
//! `--no-winograd` runs the 3x3 convolutions on the direct / gemm kernels
//! instead of Winograd (`lt_models::ops::set_winograd`); `--no-winograd-f4`
//! keeps Winograd F(2x2, 3x3) where F(4x4, 3x3) would run the forward
//! (`lt_models::ops::set_winograd_f4`); `--no-residual-runs` trains the
//! basic blocks one op each instead of as residual runs
//! (`lt_models::ops::set_residual_runs`).
//! The main thread is worker 0 of the rayon pool and runs the steps
//! (`lt_models::ops::on_worker`), as in `lt-cli`; `--on-main-thread` keeps
//! it outside the pool, each parallel loop handed to the pool's workers
//! from outside, for an A/B.
//! The heap, from the first block of 4 MiB on, and large blocks outside it
//! are advised as transparent huge pages (`lt_models::ops::HugePageAlloc`,
//! as in `lt-cli`); `--no-huge-pages` leaves every page at 4 KiB
//! (`lt_models::ops::set_huge_pages`), for an A/B.
//! `--max-isa avx2` takes the paths of an AVX2-only CPU
//! (`lt_models::ops::set_max_isa`); build the bench with
//! `--no-default-features` as well so that `gemm` leaves AVX-512 alone too.
//!
//! `--mode infer` times `Backbone::forward_inference` (batch norm folded into
//! the convolutions, folding included in every step) and the head;
//! `infer-unfused` the eval-mode forward without folding, for comparison.
//!
//! Prints one JSON line: model, batch, size, threads, `img_per_s_median`,
//! `step_ms` (timed steps), `cpu_ms_median` (process CPU time per step, which
//! other load on the machine barely moves), `peak_rss_mb` (VmHWM) and the
//! load average at the start. `--profile` also prints, to stderr, the median
//! split of a step into forward / backward / optimiser.
//!
//! The network is `lt_models::Backbone` (any `--model` it knows) plus a
//! linear head.
//!
//! On a GPU (a build with `--features cuda`): `--device cuda:0` and
//! `--precision bf16` (f32 master weights, bf16 activations; see
//! `lt_models::precision`). The device is synchronised around every timed
//! step, so the times are the GPU's. `benches/gpu_bench.sh` runs this and the
//! PyTorch peer (`benches/torch_gpu_step.py`) side by side.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use lt_models::ops::HugePageAlloc;
use lt_models::ops::Isa;
use lt_models::{Arch, Backbone, BnMode, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::alloc::{GlobalAlloc, Layout};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The allocator of `lt-cli` ([`HugePageAlloc`]), counting live bytes and
/// their high-water mark, so the bench can tell the tensors' own peak from
/// what the allocator keeps on top of it (`peak_heap_mb` against
/// `peak_rss_mb`).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(size: usize) {
        let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `HugePageAlloc`; the counters do not
// affect the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { HugePageAlloc.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { HugePageAlloc.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { HugePageAlloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { HugePageAlloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Args {
    model: String,
    batch: usize,
    size: Option<usize>,
    classes: usize,
    threads: usize,
    steps: usize,
    warmup: usize,
    profile: bool,
    infer: bool,
    /// `--mode infer-unfused`: the eval forward without folding batch norm
    /// (what `forward_inference` ran before folding), for an A/B.
    unfused: bool,
    device: String,
    precision: Precision,
    /// `--no-winograd`: 3x3 convolutions on the direct / gemm kernels
    /// (`lt_models::ops::set_winograd(false)`), for an A/B.
    winograd: bool,
    /// `--no-winograd-f4`: F(2x2, 3x3) instead of F(4x4, 3x3)
    /// (`lt_models::ops::set_winograd_f4(false)`), for an A/B.
    winograd_f4: bool,
    /// `--no-residual-runs`: the blocks one op each
    /// (`lt_models::ops::set_residual_runs(false)`), for an A/B.
    residual_runs: bool,
    /// `--max-isa`: cap on the kernels' instruction sets.
    max_isa: Option<Isa>,
    /// `--on-main-thread`: the steps on a main thread outside the pool
    /// rather than on one of its workers (`lt_models::ops::on_worker`),
    /// for an A/B.
    on_main_thread: bool,
    /// `--no-huge-pages`: no huge-page advice for large blocks
    /// (`lt_models::ops::set_huge_pages(false)`), for an A/B.
    huge_pages: bool,
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
        infer: false,
        unfused: false,
        device: "cpu".into(),
        precision: Precision::F32,
        winograd: true,
        winograd_f4: true,
        residual_runs: true,
        max_isa: None,
        on_main_thread: false,
        huge_pages: true,
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
            "--no-winograd" => a.winograd = false,
            "--no-winograd-f4" => a.winograd_f4 = false,
            "--no-residual-runs" => a.residual_runs = false,
            "--on-main-thread" => a.on_main_thread = true,
            "--no-huge-pages" => a.huge_pages = false,
            "--max-isa" => {
                let v = value("--max-isa");
                a.max_isa = Some(v.parse().unwrap_or_else(|e| panic!("--max-isa: {e}")));
            }
            "--mode" => match value("--mode").as_str() {
                "train" => a.infer = false,
                "infer" => a.infer = true,
                "infer-unfused" => (a.infer, a.unfused) = (true, true),
                v => panic!("--mode: expected train, infer or infer-unfused, got {v:?}"),
            },
            "--device" => a.device = value("--device"),
            "--precision" => {
                let v = value("--precision");
                a.precision = serde_json::from_value(serde_json::Value::String(v.clone()))
                    .unwrap_or_else(|_| panic!("--precision: expected f32 or bf16, got {v:?}"));
            }
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
            // On detached tensors, as `lt_train::optim::SgdMomentum` does:
            // an update computed from the variable itself records the op
            // graph, and each momentum buffer then keeps every earlier
            // step's gradients alive (about 0.45 GB more per step on
            // ResNet-50, all of it counted in the peak memory).
            let wt = w.as_detached_tensor();
            let g = (g.detach() + (&wt * self.weight_decay)?)?;
            let nv = match v.take() {
                Some(v) => ((v * self.momentum)? + g)?,
                None => g,
            };
            w.set(&(wt - (&nv * self.lr)?)?)?;
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

fn main() -> Result<()> {
    let args = parse_args();
    lt_models::ops::set_huge_pages(args.huge_pages);
    lt_models::ops::set_winograd(args.winograd);
    lt_models::ops::set_winograd_f4(args.winograd_f4);
    lt_models::ops::set_residual_runs(args.residual_runs);
    if let Some(isa) = args.max_isa {
        lt_models::ops::set_max_isa(isa);
    }
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
    // The main thread is worker 0 of the pool, as in `lt-cli`, unless
    // `--on-main-thread` keeps it outside (the old way).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads);
    let pool = if args.on_main_thread {
        pool
    } else {
        pool.use_current_thread()
    };
    pool.build_global().expect("rayon pool");
    let load = load_average();
    let arch = Arch::from_str(&args.model).unwrap_or_else(|e| panic!("--model: {e}"));
    let size = args.size.unwrap_or(if arch.is_cifar() { 32 } else { 224 });
    let dev = match args.device.as_str() {
        "cpu" => Device::Cpu,
        spec => {
            let ordinal = spec
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("--device: expected cpu or cuda:N, got {spec:?}"));
            Device::new_cuda(ordinal)?
        }
    };
    let mut backbone = Backbone::new(arch, &dev, 0).map_err(candle_core::Error::wrap)?;
    backbone.set_precision(args.precision);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let d = backbone.feature_dim();
    let bound = 1.0 / (d as f32).sqrt();
    let fc_w = Var::from_tensor(&randn(&mut rng, &[args.classes, d], bound)?.to_device(&dev)?)?;
    let fc_b = Var::from_tensor(&Tensor::zeros(args.classes, DType::F32, &dev)?)?;
    let mut params: Vec<(Var, Option<Tensor>)> = backbone
        .parameters()
        .into_iter()
        .map(|(_, v)| (v, None))
        .collect();
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
    let mut live_fwd: f64 = 0.0;
    let mut steps = || -> Result<()> {
        for i in 0..args.warmup + args.steps {
            let x = randn(&mut rng, &[args.batch, 3, size, size], 1.0)?.to_device(&dev)?;
            let labels: Vec<u32> = (0..args.batch)
                .map(|_| rng.random_range(0..args.classes as u32))
                .collect();
            let y = Tensor::from_vec(labels, args.batch, &dev)?;
            dev.synchronize()?;
            let (c0, t0) = (process_cpu_ms(), Instant::now());
            if args.infer {
                let feats = if args.unfused {
                    lt_models::ops::without_grad(|| backbone.forward_t(&x, BnMode::Eval))
                        .map_err(candle_core::Error::wrap)?
                        .detach()
                } else {
                    backbone
                        .forward_inference(&x)
                        .map_err(candle_core::Error::wrap)?
                };
                let logits = feats
                    .matmul(&fc_w.as_tensor().detach().t()?)?
                    .broadcast_add(&fc_b.as_tensor().detach())?;
                live_fwd = live_fwd.max(mib(LIVE.load(Ordering::Relaxed)));
                drop(logits);
                dev.synchronize()?;
                let t1 = Instant::now();
                if i >= args.warmup {
                    wall.push((t1 - t0).as_secs_f64() * 1e3);
                    cpu.push(process_cpu_ms() - c0);
                }
                continue;
            }
            let feats = backbone
                .forward_t(&x, BnMode::Train)
                .map_err(candle_core::Error::wrap)?;
            let logits = feats
                .matmul(&fc_w.as_tensor().t()?)?
                .broadcast_add(fc_b.as_tensor())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            if args.profile {
                dev.synchronize()?;
            }
            live_fwd = live_fwd.max(mib(LIVE.load(Ordering::Relaxed)));
            let t1 = Instant::now();
            let grads = loss.backward()?;
            if args.profile {
                dev.synchronize()?;
            }
            let t2 = Instant::now();
            sgd.step(&grads)?;
            drop(grads);
            dev.synchronize()?;
            let t3 = Instant::now();
            if i >= args.warmup {
                wall.push((t3 - t0).as_secs_f64() * 1e3);
                cpu.push(process_cpu_ms() - c0);
                split[0].push((t1 - t0).as_secs_f64() * 1e3);
                split[1].push((t2 - t1).as_secs_f64() * 1e3);
                split[2].push((t3 - t2).as_secs_f64() * 1e3);
            }
        }
        Ok(())
    };
    if args.on_main_thread {
        steps()?;
    } else {
        lt_models::ops::on_worker(steps)?;
    }
    let med = median(&wall);
    if args.profile && !args.infer {
        eprintln!(
            "median ms: forward {:.1}, backward {:.1}, sgd {:.1}",
            median(&split[0]),
            median(&split[1]),
            median(&split[2])
        );
    }
    let steps: Vec<String> = wall.iter().map(|t| format!("{t:.1}")).collect();
    println!(
        "{{\"model\": \"{}\", \"batch\": {}, \"size\": {size}, \"threads\": {}, \"device\": \"{}\", \"precision\": \"{}\", \"framework\": \"lt-models\", \"mode\": \"{}\", \"winograd\": {}, \"winograd_f4\": {}, \"residual_runs\": {}, \"on_worker\": {}, \"huge_pages\": {}, \"isa\": \"{}\", \"avx512_gemm\": {}, \"img_per_s_median\": {:.1}, \"step_ms\": [{}], \"cpu_ms_median\": {:.1}, \"peak_rss_mb\": {:.0}, \"peak_heap_mb\": {:.0}, \"live_after_forward_mb\": {:.0}, \"loadavg\": \"{load}\"}}",
        args.model,
        args.batch,
        args.threads,
        args.device,
        args.precision,
        match (args.infer, args.unfused) {
            (true, true) => "infer-unfused",
            (true, false) => "infer",
            _ => "train",
        },
        args.winograd,
        args.winograd && args.winograd_f4,
        args.residual_runs,
        !args.on_main_thread,
        args.huge_pages,
        lt_models::ops::active_isa(),
        cfg!(feature = "avx512-gemm"),
        args.batch as f64 / med * 1e3,
        steps.join(", "),
        median(&cpu),
        status_mb("VmHWM:").unwrap_or(f64::NAN),
        mib(PEAK.load(Ordering::Relaxed)),
        live_fwd,
    );
    Ok(())
}
