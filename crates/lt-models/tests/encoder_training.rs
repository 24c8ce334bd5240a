//! Fine-tuning the encoders: gradients of the shared differentiable block
//! against finite differences, frozen blocks without gradients, and one SGD
//! step that lowers the loss as its gradient predicts.
//!
//! The encoders are the tiny random ones of `tests/fixtures/encoders` (2
//! blocks, width 32, 32x32 images in 8x8 patches), whose weights are far
//! from the near-trivial default initialisation.

use candle_core::{DType, Device, Tensor, Var};
use lt_models::encoders::{Encoder, EncoderConfig, EncoderFamily, Trainable};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/encoders")
        .join(name)
}

fn load(name: &str, family: EncoderFamily) -> Encoder {
    let config =
        EncoderConfig::from_json_file(family, &fixture(&format!("{name}_config.json"))).unwrap();
    Encoder::from_safetensors(
        config,
        &fixture(&format!("{name}.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

/// The families, with variables of the last block and after it whose
/// gradients are checked: a layer norm's, the query projection's (DINOv2:
/// the fused qkv, SigLIP's head: the fused in_proj), an MLP weight, and
/// what follows the blocks.
const FAMILIES: [(&str, EncoderFamily, &[&str]); 4] = [
    (
        "vit",
        EncoderFamily::Vit,
        &[
            "encoder.layer.1.layernorm_before.weight",
            "encoder.layer.1.attention.attention.query.weight",
            "encoder.layer.1.intermediate.dense.weight",
            "layernorm.bias",
        ],
    ),
    (
        "dinov2",
        EncoderFamily::Dinov2,
        &[
            "blocks.1.norm1.weight",
            "blocks.1.attn.qkv.weight",
            "blocks.1.mlp.fc1.weight",
            "blocks.1.ls1.gamma",
        ],
    ),
    (
        "clip",
        EncoderFamily::Clip,
        &[
            "encoder.layers.1.layer_norm1.weight",
            "encoder.layers.1.self_attn.q_proj.weight",
            "encoder.layers.1.mlp.fc2.weight",
            "post_layernorm.weight",
        ],
    ),
    (
        "siglip",
        EncoderFamily::Siglip,
        &[
            "encoder.layers.1.layer_norm1.weight",
            "encoder.layers.1.self_attn.q_proj.weight",
            "encoder.layers.1.mlp.fc1.weight",
            "head.attention.in_proj_weight",
            "head.probe",
            "head.layernorm.weight",
            "head.mlp.fc2.weight",
        ],
    ),
];

fn input(seed: u64) -> Tensor {
    let dev = Device::Cpu;
    // Deterministic, not symmetric: a fixed pattern of the seed.
    let n = 2 * 3 * 32 * 32;
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (2, 3, 32, 32), &dev).unwrap()
}

/// `sum(features * r)` for a fixed `r`, the forward pass in f64.
fn probe_loss(encoder: &Encoder, x: &Tensor, r: &Tensor) -> Tensor {
    let f = encoder.forward_dtype(x, DType::F64).unwrap();
    (f.to_dtype(DType::F64).unwrap() * r)
        .unwrap()
        .sum_all()
        .unwrap()
}

fn var_of(encoder: &Encoder, name: &str) -> Var {
    encoder
        .store()
        .named_vars()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .1
        .clone()
}

#[test]
fn last_block_gradients_match_finite_differences() {
    let x = input(1);
    let r: Vec<f64> = (0..64)
        .map(|i| ((i * 37 % 17) as f64 - 8.0) / 8.0)
        .collect();
    let r = Tensor::from_vec(r, (2, 32), &Device::Cpu).unwrap();
    for (name, family, checked) in FAMILIES {
        let mut encoder = load(name, family);
        encoder.set_trainable(Trainable::LastBlocks(1)).unwrap();
        let grads = probe_loss(&encoder, &x, &r).backward().unwrap();

        // Frozen blocks and the stem receive no gradient; the last block
        // and what follows it all do.
        for (n, var) in encoder.store().named_vars() {
            let has = grads.get(var.as_tensor()).is_some();
            assert_eq!(has, encoder.is_trainable(n), "{name}: {n}");
            let frozen = n.contains(".0.")
                || n.contains("embed")
                || n.contains("token")
                || n.starts_with("pre_layrnorm.");
            assert_eq!(has, !frozen, "{name}: {n}");
        }

        for &param in checked {
            let var = var_of(&encoder, param);
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {param}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let w0 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let n = w0.len();
            let mut largest = 0f64;
            for i in [0, n / 2 + 1, n - 1] {
                let at = |delta: f32| -> (f64, f64) {
                    let mut w = w0.clone();
                    w[i] += delta;
                    let actual = w[i] as f64 - w0[i] as f64;
                    var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let l = probe_loss(&encoder, &x, &r).to_scalar::<f64>().unwrap();
                    (l, actual)
                };
                let (lp, dp) = at(1e-2);
                let (lm, dm) = at(-1e-2);
                var.set(&Tensor::from_vec(w0.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let fd = (lp - lm) / (dp - dm);
                let ad = g[i] as f64;
                largest = largest.max(fd.abs());
                assert!(
                    (ad - fd).abs() <= 2e-3 * fd.abs() + 2e-4,
                    "{name} {param}[{i}]: autograd {ad}, finite difference {fd}"
                );
            }
            assert!(largest > 1e-3, "{name} {param}: gradients all near 0");
        }
    }
}

#[test]
fn one_sgd_step_lowers_the_loss_as_predicted() {
    let x = input(2);
    let target = Tensor::from_vec(
        (0..64)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0)
            .collect::<Vec<_>>(),
        (2, 32),
        &Device::Cpu,
    )
    .unwrap();
    let loss_of = |e: &Encoder| -> Tensor {
        (e.forward(&x).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    for (name, family, _) in FAMILIES {
        for trainable in [Trainable::All, Trainable::LastBlocks(1)] {
            let mut encoder = load(name, family);
            encoder.set_trainable(trainable).unwrap();
            let loss = loss_of(&encoder);
            let l0 = loss.to_scalar::<f32>().unwrap() as f64;
            let grads = loss.backward().unwrap();
            let params = encoder.parameters();
            let g2: f64 = params
                .iter()
                .map(|(n, v)| {
                    let g = grads
                        .get(v.as_tensor())
                        .unwrap_or_else(|| panic!("{name} {trainable}: no gradient for {n}"));
                    g.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap() as f64
                })
                .sum();
            // A step that should lower the loss by 1% to first order.
            let lr = 0.01 * l0 / g2;
            let frozen: Vec<(String, Tensor)> = encoder
                .store()
                .named_vars()
                .iter()
                .filter(|(n, _)| !encoder.is_trainable(n))
                .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
                .collect();
            for (_, v) in &params {
                let g = grads.get(v.as_tensor()).unwrap();
                v.set(&(v.as_tensor() - (g * lr).unwrap()).unwrap())
                    .unwrap();
            }
            let l1 = loss_of(&encoder).to_scalar::<f32>().unwrap() as f64;
            let (drop, predicted) = (l0 - l1, lr * g2);
            assert!(
                drop > 0.5 * predicted && drop < 1.5 * predicted,
                "{name} {trainable}: loss {l0} -> {l1}, predicted drop {predicted}"
            );
            for (n, before) in frozen {
                let after = var_of(&encoder, &n);
                let same = (after.as_tensor() - &before)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(same, 0.0, "{name} {trainable}: frozen {n} changed");
            }
        }
    }
}
