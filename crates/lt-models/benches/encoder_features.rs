//! Frozen-encoder feature throughput: images per second of the forward pass
//! that `lt-cli features` and the linear probe run (no autograd graph), the
//! same forward as the peer script `benches/encoder_peer.py` (Hugging Face
//! `ViTModel` under `torch.no_grad()`).
//!
//! ```text
//! cargo bench -p lt-models --bench encoder_features -- --model vit_s16 --batch 32 \
//!     --threads 2 --steps 5 --warmup 1
//! .venv-peer/bin/python crates/lt-models/benches/encoder_peer.py --model vit_s16 \
//!     --batch 32 --threads 2 --steps 5 --warmup 1
//! ```
//!
//! Prints one JSON line: model, batch, threads, `img_per_s_median`, `step_ms`.
//! The weights are random (speed does not depend on them); `--model` is any
//! encoder arch of a standard size (`vit_s16`, `vit_b16`, `dinov2_s14`,
//! `clip_b16`, ...), at its image size (224). Run both in the same sitting on
//! an otherwise idle machine and quote the ratio, not absolute figures.

use candle_core::{DType, Device, Result, Tensor};
use lt_models::{Arch, Encoder};
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model: String = arg(&args, "--model", "vit_s16".to_string());
    let batch: usize = arg(&args, "--batch", 32);
    let threads: usize = arg(&args, "--threads", 2);
    let steps: usize = arg(&args, "--steps", 5);
    let warmup: usize = arg(&args, "--warmup", 1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(candle_core::Error::wrap)?;
    let arch: Arch = model.parse().map_err(candle_core::Error::wrap)?;
    let spec = arch
        .encoder()
        .and_then(|e| e.standard())
        .ok_or_else(|| candle_core::Error::Msg(format!("{model} is not a sized encoder arch")))?;
    let size = if spec.family == lt_models::EncoderFamily::Dinov2 {
        224
    } else {
        spec.image_size
    };
    let dev = Device::Cpu;
    let encoder = Encoder::random(spec, &dev, 0).map_err(candle_core::Error::wrap)?;
    let x = (Tensor::arange(0f32, (batch * 3 * size * size) as f32, &dev)?
        .reshape((batch, 3, size, size))?
        * 1e-3)?
        .sin()?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        let f = encoder
            .forward_frozen(&x)
            .map_err(candle_core::Error::wrap)?;
        let _ = f.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"lt-models\", \"model\": \"{model}\", \"batch\": {batch}, \"threads\": {threads}, \
         \"img_per_s_median\": {:.2}, \"step_ms\": {:?}}}",
        batch as f64 / median,
        times.iter().map(|t| (t * 1e3).round()).collect::<Vec<_>>()
    );
    Ok(())
}
