//! Op-level timings of the project's CPU kernels against candle's own ops
//! (`ops::reference`): forward and forward + backward of typical shapes.
//!
//! ```text
//! cargo bench -p lt-models --bench conv_ops -- [--threads 2] [--reps 5] [--no-reference] [--filter NAME] [--no-winograd-f4]
//! ```
//!
//! Prints one JSON line per case: `{"case", "ours_fwd_ms", "ours_fwd_bwd_ms",
//! "ref_fwd_ms", "ref_fwd_bwd_ms", "gflops_fwd_bwd"}` (medians).

use candle_core::{Device, Result, Tensor, Var};
use lt_models::ops::{self, reference, Conv2dParams, Epilogue};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::time::Instant;

struct Args {
    threads: usize,
    reps: usize,
    reference: bool,
    filter: Option<String>,
    /// `--no-winograd-f4`: F(2x2, 3x3) where F(4x4, 3x3) would run
    /// (`lt_models::ops::set_winograd_f4(false)`), for an A/B.
    winograd_f4: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        threads: 2,
        reps: 5,
        reference: true,
        filter: None,
        winograd_f4: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = value("--threads").parse().expect("--threads: integer"),
            "--reps" => a.reps = value("--reps").parse().expect("--reps: integer"),
            "--no-reference" => a.reference = false,
            "--filter" => a.filter = Some(value("--filter")),
            "--no-winograd-f4" => a.winograd_f4 = false,
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    a
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("valid normal");
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
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

/// CPU time consumed so far by all threads of this process, in ms (0 off
/// Linux). Unlike wall time it barely moves when other processes share the
/// cores, so it is the figure to compare kernel variants with.
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
        let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
        }
    }
    0.0
}

/// Median wall ms and median CPU ms (all threads) of `f`.
fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?; // warm-up
    let mut wall = Vec::with_capacity(reps);
    let mut cpu = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (c0, start) = (process_cpu_ms(), Instant::now());
        f()?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        cpu.push(process_cpu_ms() - c0);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok((median(wall), median(cpu)))
}

type Op = dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Median (wall, CPU) ms of the forward pass and of forward + backward of
/// `op(x)` (upstream gradient all ones).
fn time_op(inputs: &[Tensor], op: &Op, reps: usize) -> Result<((f64, f64), (f64, f64))> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let fwd = median_ms(reps, || op(&ts).map(|_| ()))?;
    let fwd_bwd = median_ms(reps, || {
        // `backward` on a non-scalar seeds it with a contiguous tensor of ones.
        let g = op(&ts)?.backward()?;
        for t in &ts {
            g.get(t).expect("gradient");
        }
        Ok(())
    })?;
    Ok((fwd, fwd_bwd))
}

struct Case {
    name: String,
    inputs: Vec<Tensor>,
    ours: Box<Op>,
    refr: Box<Op>,
    /// Floating-point operations of forward + backward (0 when not a conv).
    flops: f64,
}

fn conv_case(
    name: &str,
    x: [usize; 4],
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Case {
    let p = Conv2dParams {
        stride,
        padding,
        groups,
    };
    let oh = (x[2] + 2 * padding - k) / stride + 1;
    let ow = (x[3] + 2 * padding - k) / stride + 1;
    let macs = (x[0] * cout * oh * ow * (x[1] / groups) * k * k) as f64;
    Case {
        name: format!(
            "{name} {}x{}x{}x{} -> {cout} k{k} s{stride} p{padding} g{groups}",
            x[0], x[1], x[2], x[3]
        ),
        inputs: vec![
            randn(&x, 1),
            (randn(&[cout, x[1] / groups, k, k], 2) * 0.1).expect("scale"),
        ],
        ours: Box::new(move |t: &[Tensor]| ops::conv2d(&t[0], &t[1], p)),
        refr: Box::new(move |t: &[Tensor]| reference::conv2d(&t[0], &t[1], p)),
        flops: 3.0 * 2.0 * macs,
    }
}

fn main() -> Result<()> {
    let args = parse_args();
    ops::set_winograd_f4(args.winograd_f4);
    // candle's own ops (the reference) keep their default threading.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .expect("rayon pool");
    let (bn_w, bn_b) = (randn(&[16], 3), randn(&[16], 4));
    let mut cases = vec![
        conv_case("cifar-stage1", [128, 16, 32, 32], 16, 3, 1, 1, 1),
        conv_case("cifar-stage2", [128, 32, 16, 16], 32, 3, 1, 1, 1),
        conv_case("cifar-stage3", [128, 64, 8, 8], 64, 3, 1, 1, 1),
        conv_case("cifar-down", [128, 16, 32, 32], 32, 3, 2, 1, 1),
        conv_case("cifar-proj", [128, 16, 32, 32], 32, 1, 2, 0, 1),
        conv_case("cifar-down2", [128, 32, 16, 16], 64, 3, 2, 1, 1),
        conv_case("cifar-proj2", [128, 32, 16, 16], 64, 1, 2, 0, 1),
        conv_case("cifar-stem", [128, 3, 32, 32], 16, 3, 1, 1, 1),
        conv_case("imagenet-stem", [8, 3, 224, 224], 64, 7, 2, 3, 1),
        conv_case("imagenet-1x1", [8, 256, 56, 56], 64, 1, 1, 0, 1),
        conv_case("resnext-32x4d", [8, 128, 56, 56], 128, 3, 1, 1, 32),
        // ResNet-50's 3x3 stride-1 layers at 224², batch 16.
        conv_case("imagenet-3x3-56", [16, 64, 56, 56], 64, 3, 1, 1, 1),
        conv_case("imagenet-3x3-28", [16, 128, 28, 28], 128, 3, 1, 1, 1),
        conv_case("imagenet-3x3-14", [16, 256, 14, 14], 256, 3, 1, 1, 1),
        conv_case("imagenet-3x3-7", [16, 512, 7, 7], 512, 3, 1, 1, 1),
        // Its 1x1 layers on the smaller maps (stage 3 and 4 bottlenecks).
        conv_case("imagenet-1x1-14-in", [16, 1024, 14, 14], 256, 1, 1, 0, 1),
        conv_case("imagenet-1x1-14-out", [16, 256, 14, 14], 1024, 1, 1, 0, 1),
        conv_case("imagenet-1x1-7-in", [16, 2048, 7, 7], 512, 1, 1, 0, 1),
        conv_case("imagenet-1x1-7-out", [16, 512, 7, 7], 2048, 1, 1, 0, 1),
        // Its 3x3 stride-2 layers (the first block of stages 2 to 4).
        conv_case("imagenet-3x3s2-56", [16, 128, 56, 56], 128, 3, 2, 1, 1),
        conv_case("imagenet-3x3s2-28", [16, 256, 28, 28], 256, 3, 2, 1, 1),
    ];
    cases.push(Case {
        name: "bn-train 128x16x32x32".into(),
        inputs: vec![randn(&[128, 16, 32, 32], 5), bn_w.clone(), bn_b.clone()],
        ours: Box::new(|t: &[Tensor]| {
            Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5, Epilogue::None)?.0)
        }),
        refr: Box::new(|t: &[Tensor]| {
            Ok(reference::batch_norm_train(&t[0], &t[1], &t[2], 1e-5, Epilogue::None)?.0)
        }),
        flops: 0.0,
    });
    cases.push(Case {
        name: "bn-relu-train 128x16x32x32".into(),
        inputs: vec![randn(&[128, 16, 32, 32], 5), bn_w.clone(), bn_b.clone()],
        ours: Box::new(|t: &[Tensor]| {
            Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5, Epilogue::Relu)?.0)
        }),
        refr: Box::new(|t: &[Tensor]| {
            Ok(reference::batch_norm_train(&t[0], &t[1], &t[2], 1e-5, Epilogue::Relu)?.0)
        }),
        flops: 0.0,
    });
    cases.push(Case {
        name: "bn-add-relu-train 128x16x32x32".into(),
        inputs: vec![
            randn(&[128, 16, 32, 32], 5),
            randn(&[128, 16, 32, 32], 6),
            bn_w,
            bn_b,
        ],
        ours: Box::new(|t: &[Tensor]| {
            let e = Epilogue::AddRelu(&t[1]);
            Ok(ops::batch_norm_train(&t[0], &t[2], &t[3], 1e-5, e)?.0)
        }),
        refr: Box::new(|t: &[Tensor]| {
            let e = Epilogue::AddRelu(&t[1]);
            Ok(reference::batch_norm_train(&t[0], &t[2], &t[3], 1e-5, e)?.0)
        }),
        flops: 0.0,
    });
    cases.push(Case {
        name: "max-pool 3x3/2 8x64x112x112".into(),
        inputs: vec![randn(&[8, 64, 112, 112], 7)],
        ours: Box::new(|t: &[Tensor]| ops::max_pool2d(&t[0], 3, 2, 1)),
        refr: Box::new(|t: &[Tensor]| reference::max_pool2d(&t[0], 3, 2, 1)),
        flops: 0.0,
    });
    // The parameter-free shortcuts of a zero-padding CIFAR ResNet-32 (compare
    // with "cifar-proj", the projection conv they replace, plus its BN).
    for (x, pad) in [([128, 16, 32, 32], 8), ([128, 32, 16, 16], 16)] {
        cases.push(Case {
            name: format!(
                "zero-pad-shortcut {}x{}x{}x{} s2 +{pad}+{pad}",
                x[0], x[1], x[2], x[3]
            ),
            inputs: vec![randn(&x, 8)],
            ours: Box::new(move |t: &[Tensor]| ops::zero_pad_shortcut(&t[0], 2, pad, pad)),
            refr: Box::new(move |t: &[Tensor]| reference::zero_pad_shortcut(&t[0], 2, pad, pad)),
            flops: 0.0,
        });
    }
    for case in &cases {
        if let Some(f) = &args.filter {
            if !case.name.contains(f.as_str()) {
                continue;
            }
        }
        let ((of, ofc), (ofb, ofbc)) = time_op(&case.inputs, case.ours.as_ref(), args.reps)?;
        let (rf, rfb) = if args.reference {
            let ((a, _), (b, _)) = time_op(&case.inputs, case.refr.as_ref(), args.reps.min(3))?;
            (format!("{a:.2}"), format!("{b:.2}"))
        } else {
            ("null".into(), "null".into())
        };
        let gflops = if case.flops > 0.0 {
            format!("{:.1}", case.flops / ofb / 1e6)
        } else {
            "null".into()
        };
        println!(
            "{{\"case\": \"{}\", \"ours_fwd_ms\": {of:.2}, \"ours_fwd_bwd_ms\": {ofb:.2}, \"ref_fwd_ms\": {rf}, \"ref_fwd_bwd_ms\": {rfb}, \"gflops_fwd_bwd\": {gflops}, \"ours_fwd_cpu_ms\": {ofc:.2}, \"ours_fwd_bwd_cpu_ms\": {ofbc:.2}}}",
            case.name
        );
    }
    Ok(())
}
