//! The project's CPU kernels and candle's own ops (`ops::with_reference_ops`)
//! must train the same: equal loss trajectories over a few SGD steps, on a
//! small network written with `ops` directly and on the CIFAR ResNet-8.

use candle_core::{DType, Device, Result, Tensor, Var};
use lt_models::ops::{self, Conv2dParams, Epilogue};
use lt_models::{Arch, Backbone, BnMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], std: f32) -> Tensor {
    let normal = Normal::new(0.0f32, std).unwrap();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn labels(rng: &mut ChaCha8Rng, n: usize, classes: u32) -> Tensor {
    let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..classes)).collect();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

/// A residual network covering the training entry points: conv (3x3,
/// strided, grouped, 1x1), fused conv + BN (+ReLU, +add+ReLU), BN, max-pool,
/// then global average pool and linear.
struct TinyNet {
    vars: Vec<Var>,
}

impl TinyNet {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars = Vec::new();
        let mut add = |t: Tensor| vars.push(Var::from_tensor(&t).unwrap());
        add(randn(&mut rng, &[8, 3, 3, 3], 0.3)); // 0 conv1
        add(Tensor::ones(8, DType::F32, &Device::Cpu).unwrap()); // 1 bn1 weight
        add(Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap()); // 2 bn1 bias
        add(randn(&mut rng, &[8, 4, 3, 3], 0.3)); // 3 conv2, 2 groups
        add(randn(&mut rng, &[8], 0.1).affine(1.0, 1.0).unwrap()); // 4 bn2 weight
        add(randn(&mut rng, &[8], 0.1)); // 5 bn2 bias
        add(randn(&mut rng, &[8, 8, 1, 1], 0.3)); // 6 shortcut conv
        add(Tensor::ones(8, DType::F32, &Device::Cpu).unwrap()); // 7 bn3 weight
        add(Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap()); // 8 bn3 bias
        add(randn(&mut rng, &[5, 8], 0.3)); // 9 fc weight
        add(Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap()); // 10 fc bias
        Self { vars }
    }

    fn loss(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let v: Vec<&Tensor> = self.vars.iter().map(|v| v.as_tensor()).collect();
        let eps = 1e-5;
        let p = |stride, padding, groups| Conv2dParams {
            stride,
            padding,
            groups,
        };
        // Fused conv + BN for the body, separate ops for the shortcut.
        let (h, _, _) =
            ops::conv2d_batch_norm_train(x, v[0], p(1, 1, 1), v[1], v[2], eps, Epilogue::Relu)?;
        let s = ops::conv2d(&h, v[6], p(2, 0, 1))?;
        let (s, _, _) = ops::batch_norm_train(&s, v[7], v[8], eps, Epilogue::None)?;
        let add = Epilogue::AddRelu(&s);
        let (h, _, _) = ops::conv2d_batch_norm_train(&h, v[3], p(2, 1, 2), v[4], v[5], eps, add)?;
        let h = ops::max_pool2d(&h, 3, 2, 1)?;
        let f = h.mean((2, 3))?;
        let logits = f.matmul(&v[9].t()?)?.broadcast_add(v[10])?;
        candle_nn::loss::cross_entropy(&logits, y)
    }
}

/// Plain SGD `w -= lr * g` on `vars`; returns the loss of every step.
fn train(
    vars: &[Var],
    steps: usize,
    seed: u64,
    loss: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    shape: &[usize],
    classes: u32,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let x = randn(&mut rng, shape, 1.0);
        let y = labels(&mut rng, shape[0], classes);
        let l = loss(&x, &y).unwrap();
        let grads = l.backward().unwrap();
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap())
                    .unwrap();
            }
        }
        losses.push(l.to_scalar::<f32>().unwrap());
    }
    losses
}

fn assert_same_trajectory(ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len());
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 2e-4 * b.abs().max(1.0),
            "step {i}: loss {a} with the kernels, {b} with candle's ops\nours {ours:?}\nreference {reference:?}"
        );
    }
    // The steps must actually move the loss, or equal trajectories prove nothing.
    assert!(
        ours.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3),
        "loss did not change: {ours:?}"
    );
}

#[test]
fn tiny_network_trains_the_same_with_kernels_and_reference_ops() {
    let shape = [4, 3, 9, 9];
    let ours = TinyNet::new(3);
    let refr = TinyNet::new(3);
    let l_ours = train(&ours.vars, 5, 11, |x, y| ours.loss(x, y), &shape, 5);
    let l_ref =
        ops::with_reference_ops(|| train(&refr.vars, 5, 11, |x, y| refr.loss(x, y), &shape, 5));
    assert_same_trajectory(&l_ours, &l_ref);
    for (a, b) in ours.vars.iter().zip(&refr.vars) {
        let d = (a.as_tensor() - b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-3, "parameters drifted apart by {d}");
    }
}

#[test]
fn cifar_resnet8_trains_the_same_with_kernels_and_reference_ops() {
    let shape = [4, 3, 12, 12];
    let run = |backbone: &Backbone| {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let fc_w = Var::from_tensor(&randn(&mut rng, &[10, backbone.feature_dim()], 0.1)).unwrap();
        let mut vars: Vec<Var> = backbone.parameters().into_iter().map(|(_, v)| v).collect();
        vars.push(fc_w.clone());
        train(
            &vars,
            3,
            13,
            |x, y| {
                let f = backbone
                    .forward_t(x, BnMode::Train)
                    .map_err(candle_core::Error::wrap)?;
                let logits = f.matmul(&fc_w.as_tensor().t()?)?;
                candle_nn::loss::cross_entropy(&logits, y)
            },
            &shape,
            10,
        )
    };
    let ours = Backbone::new(Arch::ResNet8, &Device::Cpu, 21).unwrap();
    let refr = Backbone::new(Arch::ResNet8, &Device::Cpu, 21).unwrap();
    let l_ours = run(&ours);
    let l_ref = ops::with_reference_ops(|| run(&refr));
    assert_same_trajectory(&l_ours, &l_ref);
}
