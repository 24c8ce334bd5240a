//! The backbones against an independent, straight-line transcription of
//! torchvision's `ResNet.forward` / `Bottleneck.forward` / `BasicBlock.forward`
//! built from the reference ops and the models' own named weights. This pins
//! the wiring: stride on the 3x3 of the bottleneck, projection shortcuts,
//! ReLU placement, the stem pool and global average pooling.

mod common;

use candle_core::{Device, Tensor, D};
use common::{randn, tvalues};
use lt_models::ops::{reference, Conv2dParams, Epilogue};
use lt_models::{
    Backbone, BlockKind, BnMode, CifarResNet, CifarResNetConfig, ParamStore, ResNet, ResNetConfig,
    BN_EPS,
};
use std::collections::HashMap;

struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn of(store: &ParamStore) -> Self {
        Self(store.state_dict().unwrap())
    }
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn conv(&self, x: &Tensor, name: &str, stride: usize, groups: usize) -> Tensor {
        let w = &self.0[&format!("{name}.weight")];
        let k = w.dim(3).unwrap();
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            groups,
        };
        reference::conv2d(x, w, p).unwrap()
    }
    fn bn(&self, x: &Tensor, name: &str, mode: BnMode) -> Tensor {
        let g = |s: &str| &self.0[&format!("{name}.{s}")];
        match mode {
            BnMode::Train => {
                reference::batch_norm_train(x, g("weight"), g("bias"), BN_EPS, Epilogue::None)
                    .unwrap()
                    .0
            }
            BnMode::Eval => reference::batch_norm_eval(
                x,
                g("weight"),
                g("bias"),
                g("running_mean"),
                g("running_var"),
                BN_EPS,
                Epilogue::None,
            )
            .unwrap(),
        }
    }
}

fn relu(x: Tensor) -> Tensor {
    x.relu().unwrap()
}

fn gap(x: &Tensor) -> Tensor {
    x.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap()
}

/// torchvision `Bottleneck.forward` / `BasicBlock.forward`.
fn block(
    w: &Weights,
    x: &Tensor,
    p: &str,
    kind: BlockKind,
    stride: usize,
    groups: usize,
    mode: BnMode,
) -> Tensor {
    let out = match kind {
        BlockKind::Basic => {
            let o = relu(w.bn(
                &w.conv(x, &format!("{p}.conv1"), stride, 1),
                &format!("{p}.bn1"),
                mode,
            ));
            w.bn(
                &w.conv(&o, &format!("{p}.conv2"), 1, 1),
                &format!("{p}.bn2"),
                mode,
            )
        }
        BlockKind::Bottleneck => {
            let o = relu(w.bn(
                &w.conv(x, &format!("{p}.conv1"), 1, 1),
                &format!("{p}.bn1"),
                mode,
            ));
            let o = relu(w.bn(
                &w.conv(&o, &format!("{p}.conv2"), stride, groups),
                &format!("{p}.bn2"),
                mode,
            ));
            w.bn(
                &w.conv(&o, &format!("{p}.conv3"), 1, 1),
                &format!("{p}.bn3"),
                mode,
            )
        }
    };
    let identity = if w.has(&format!("{p}.downsample.0.weight")) {
        let d = w.conv(x, &format!("{p}.downsample.0"), stride, 1);
        w.bn(&d, &format!("{p}.downsample.1"), mode)
    } else {
        x.clone()
    };
    relu((out + identity).unwrap())
}

fn imagenet_reference(w: &Weights, cfg: &ResNetConfig, x: &Tensor, mode: BnMode) -> Tensor {
    let x = relu(w.bn(&w.conv(x, "conv1", 2, 1), "bn1", mode));
    let mut x = reference::max_pool2d(&x, 3, 2, 1).unwrap();
    for (stage, &n) in cfg.layers.iter().enumerate() {
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", stage + 1);
            x = block(w, &x, &p, cfg.block, stride, cfg.groups, mode);
        }
    }
    gap(&x)
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let (a, b) = (tvalues(a), tvalues(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale})"
        );
    }
}

/// Moves every running statistic away from 0 / 1 so eval mode is a real test.
fn perturb_buffers(store: &ParamStore) {
    for (i, (_, v)) in store.buffers().iter().enumerate() {
        let c = v.elem_count();
        let t = randn((1, 1, 1, c), 100 + i as u64).reshape(c).unwrap();
        let t = if i % 2 == 1 {
            // running_var sorts after running_mean: keep it positive.
            (t.abs().unwrap() + 0.5).unwrap()
        } else {
            (t * 0.1).unwrap()
        };
        v.set(&t).unwrap();
    }
}

#[test]
fn resnext_bottleneck_matches_torchvision_transcription() {
    let cfg = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: [2, 1, 1, 1],
        groups: 32,
        width_per_group: 4,
        in_channels: 3,
    };
    let net = ResNet::new(&cfg, &Device::Cpu, 21).unwrap();
    perturb_buffers(net.store());
    let x = randn((2, 3, 40, 40), 22);
    for mode in [BnMode::Eval, BnMode::Train] {
        let w = Weights::of(net.store());
        let want = imagenet_reference(&w, &cfg, &x, mode);
        let got = net.forward_t(&x, mode).unwrap();
        assert_close(&got, &want, 1e-4, &format!("{mode:?}"));
    }
}

#[test]
fn resnet10_basic_matches_torchvision_transcription() {
    let cfg = ResNetConfig::resnet10();
    let b = Backbone::new(lt_models::Arch::ResNet10, &Device::Cpu, 5).unwrap();
    perturb_buffers(b.store());
    let x = randn((2, 3, 48, 40), 6);
    for mode in [BnMode::Eval, BnMode::Train] {
        let w = Weights::of(b.store());
        let want = imagenet_reference(&w, &cfg, &x, mode);
        let got = b.forward_t(&x, mode).unwrap();
        assert_close(&got, &want, 1e-4, &format!("{mode:?}"));
    }
}

#[test]
fn cifar_resnet_matches_transcription() {
    let cfg = CifarResNetConfig::from_depth(14);
    let net = CifarResNet::new(&cfg, &Device::Cpu, 9).unwrap();
    perturb_buffers(net.store());
    let x = randn((3, 3, 16, 16), 10);
    for mode in [BnMode::Eval, BnMode::Train] {
        let w = Weights::of(net.store());
        let mut h = relu(w.bn(&w.conv(&x, "conv1", 1, 1), "bn1", mode));
        for stage in 0..3 {
            for i in 0..cfg.blocks_per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let p = format!("layer{}.{i}", stage + 1);
                h = block(&w, &h, &p, BlockKind::Basic, stride, 1, mode);
            }
        }
        let want = gap(&h);
        let got = net.forward_t(&x, mode).unwrap();
        assert_eq!(got.dims(), [3, 64]);
        assert_close(&got, &want, 1e-4, &format!("{mode:?}"));
    }
}

/// LDAM-DRW's `BasicBlock` with option 'A' where the shape changes: the
/// shortcut is `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`.
fn option_a_block(w: &Weights, x: &Tensor, p: &str, stride: usize, mode: BnMode) -> Tensor {
    let o = relu(w.bn(
        &w.conv(x, &format!("{p}.conv1"), stride, 1),
        &format!("{p}.bn1"),
        mode,
    ));
    let out = w.bn(
        &w.conv(&o, &format!("{p}.conv2"), 1, 1),
        &format!("{p}.bn2"),
        mode,
    );
    let (n, c, h, wd) = x.dims4().unwrap();
    let planes = out.dim(1).unwrap();
    let shortcut = if stride != 1 || c != planes {
        // x[:, :, ::2, ::2] of an even-sized map: the first of each 2x2 cell.
        let sub = x
            .reshape((n, c, h / 2, 2, wd / 2, 2))
            .unwrap()
            .narrow(3, 0, 1)
            .unwrap()
            .narrow(5, 0, 1)
            .unwrap()
            .reshape((n, c, h / 2, wd / 2))
            .unwrap();
        sub.pad_with_zeros(1, planes / 4, planes / 4).unwrap()
    } else {
        x.clone()
    };
    relu((out + shortcut).unwrap())
}

#[test]
fn cifar_resnet_ldam_matches_transcription() {
    let cfg = CifarResNetConfig::ldam_drw(14);
    let net = CifarResNet::new(&cfg, &Device::Cpu, 12).unwrap();
    perturb_buffers(net.store());
    let x = randn((3, 3, 16, 16), 13);
    for mode in [BnMode::Eval, BnMode::Train] {
        let w = Weights::of(net.store());
        assert!(!w.0.keys().any(|k| k.contains("downsample")));
        let mut h = relu(w.bn(&w.conv(&x, "conv1", 1, 1), "bn1", mode));
        for stage in 0..3 {
            for i in 0..cfg.blocks_per_stage {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let p = format!("layer{}.{i}", stage + 1);
                h = option_a_block(&w, &h, &p, stride, mode);
            }
        }
        let want = gap(&h);
        let got = net.forward_t(&x, mode).unwrap();
        assert_eq!(got.dims(), [3, 64]);
        assert_close(&got, &want, 1e-4, &format!("{mode:?}"));
    }
}
