//! The residual block shared by every backbone.

use crate::batch_norm::{BatchNorm2d, BnMode, BN_EPS};
use crate::cifar_resnet::Shortcut;
use crate::error::ModelError;
use crate::error::Result;
use crate::folded::{FoldedBlock, FoldedConv, FoldedShortcut};
use crate::init::{Conv, ParamBuilder};
use crate::ops::{self, BasicBlockTensors, Conv2dParams, Epilogue, ShortcutTensors};
use candle_core::{DType, Tensor};

/// `relu(body(x) + shortcut(x))`, where `body` is a chain of conv + BN pairs
/// with a ReLU between consecutive pairs, and `shortcut` is the identity or,
/// where the shape changes, a 1x1 conv + BN projection (torchvision's
/// `downsample`) or the parameter-free zero-padding shortcut
/// ([`Shortcut::ZeroPad`]).
///
/// A basic block has two 3x3 pairs; a bottleneck has 1x1, 3x3 (carrying the
/// stride and the groups, torchvision's "v1.5" layout), 1x1.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Every body pair but the last, each followed by a ReLU.
    inner: Vec<(Conv, BatchNorm2d)>,
    /// The last body pair, whose BN is fused with the residual add and ReLU.
    last: (Conv, BatchNorm2d),
    shortcut: ShortcutPath,
}

/// What a block adds to its body's output.
#[derive(Debug, Clone)]
enum ShortcutPath {
    Identity,
    /// `{prefix}.downsample.0` (1x1 conv) and `.1` (BN).
    Projection(Conv, BatchNorm2d),
    /// [`ops::zero_pad_shortcut`] with these arguments.
    ZeroPad {
        stride: usize,
        front: usize,
        back: usize,
    },
}

/// One convolution of a block body: kernel, output channels, stride, groups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub kernel: usize,
    pub out: usize,
    pub stride: usize,
    pub groups: usize,
}

impl Block {
    /// Builds the block named `prefix` (e.g. `layer2.0`): body convs named
    /// `{prefix}.conv{i}` / `{prefix}.bn{i}` from 1, then, when `stride != 1`
    /// or the channel count changes, the projection `{prefix}.downsample.0` /
    /// `.1` or (`Shortcut::ZeroPad`, no variables) the zero-padding shortcut,
    /// which needs at least as many output channels as input channels.
    pub(crate) fn new(
        b: &mut ParamBuilder,
        prefix: &str,
        in_channels: usize,
        specs: &[ConvSpec],
        kind: Shortcut,
    ) -> Result<Self> {
        let mut body = Vec::with_capacity(specs.len());
        let mut c = in_channels;
        for (i, s) in specs.iter().enumerate() {
            let params = Conv2dParams {
                stride: s.stride,
                padding: s.kernel / 2,
                groups: s.groups,
            };
            let conv = b.conv(
                &format!("{prefix}.conv{}", i + 1),
                c,
                s.out,
                s.kernel,
                params,
            )?;
            let bn = b.batch_norm(&format!("{prefix}.bn{}", i + 1), s.out)?;
            body.push((conv, bn));
            c = s.out;
        }
        let stride: usize = specs.iter().map(|s| s.stride).product();
        let shortcut = if stride == 1 && in_channels == c {
            ShortcutPath::Identity
        } else {
            match kind {
                Shortcut::Projection => {
                    let params = Conv2dParams {
                        stride,
                        padding: 0,
                        groups: 1,
                    };
                    let conv =
                        b.conv(&format!("{prefix}.downsample.0"), in_channels, c, 1, params)?;
                    let bn = b.batch_norm(&format!("{prefix}.downsample.1"), c)?;
                    ShortcutPath::Projection(conv, bn)
                }
                Shortcut::ZeroPad => {
                    let extra = c.checked_sub(in_channels).ok_or_else(|| {
                        ModelError::InvalidConfig(format!(
                            "block {prefix}: a zero-padding shortcut cannot map \
                             {in_channels} channels to {c}"
                        ))
                    })?;
                    ShortcutPath::ZeroPad {
                        stride,
                        front: extra / 2,
                        back: extra - extra / 2,
                    }
                }
            }
        };
        let last = body.pop().ok_or_else(|| {
            ModelError::InvalidConfig(format!("block {prefix} has no convolutions"))
        })?;
        Ok(Self {
            inner: body,
            last,
            shortcut,
        })
    }

    pub(crate) fn forward_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            ShortcutPath::Identity => x.clone(),
            ShortcutPath::Projection(conv, bn) => {
                bn.forward_conv_t(conv, x, Epilogue::None, mode)?
            }
            &ShortcutPath::ZeroPad {
                stride,
                front,
                back,
            } => ops::zero_pad_shortcut(x, stride, front, back)?,
        };
        let mut y = x.clone();
        for (conv, bn) in &self.inner {
            y = bn.forward_conv_t(conv, &y, Epilogue::Relu, mode)?;
        }
        let (conv, bn) = &self.last;
        bn.forward_conv_t(conv, &y, Epilogue::AddRelu(&shortcut), mode)
    }
}

/// A convolution, its batch norm and a ReLU ahead of a network's blocks
/// (a CIFAR ResNet's first layer), which [`Block::forward_all`] can take
/// into the first residual run.
pub(crate) type Stem<'a> = (&'a Conv, &'a BatchNorm2d);

impl Block {
    /// `stem` (if any), then `blocks` in order. In training mode (without
    /// synchronised batch norm), each maximal run of basic blocks goes
    /// through [`ops::residual_run_train`] as one op, which keeps the
    /// gradients between them out of candle's serial accumulation, the stem
    /// in the first run where that run starts at the first block; other
    /// blocks (and every block where the run declines) run one by one. Same
    /// results either way.
    pub(crate) fn forward_all(
        stem: Option<Stem<'_>>,
        blocks: &[&Block],
        x: Tensor,
        mode: BnMode,
    ) -> Result<Tensor> {
        let runs_apply = mode == BnMode::Train && crate::sync_bn::active().is_none();
        let run_at = |i: usize| {
            if runs_apply {
                blocks[i..]
                    .iter()
                    .take_while(|b| b.run_tensors().is_some())
                    .count()
            } else {
                0
            }
        };
        let mut x = x;
        let mut i = 0;
        if let Some((conv, bn)) = stem {
            let run = if blocks.is_empty() { 0 } else { run_at(0) };
            match (run > 0)
                .then(|| Self::forward_run(stem, &blocks[..run], &x))
                .transpose()?
                .flatten()
            {
                Some(y) => {
                    x = y;
                    i = run;
                }
                None => x = bn.forward_conv_t(conv, &x, Epilogue::Relu, mode)?,
            }
        }
        while i < blocks.len() {
            let run = run_at(i);
            if run > 0 {
                if let Some(y) = Self::forward_run(None, &blocks[i..i + run], &x)? {
                    x = y;
                    i += run;
                    continue;
                }
            }
            x = blocks[i].forward_t(&x, mode)?;
            i += 1;
        }
        Ok(x)
    }

    /// `stem` (if any) and `blocks` (all with [`Block::run_tensors`]) as
    /// one residual run in training mode, their running statistics
    /// updated; `None` where the run declines the operands.
    fn forward_run(
        stem: Option<Stem<'_>>,
        blocks: &[&Block],
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        // Each batch norm's count, checked before anything runs (the error
        // the layer-by-layer path gives).
        let mut dims = x.dims4()?;
        let stem_count = match stem {
            Some((conv, bn)) => {
                let count = bn.conv_batch_count(conv, dims)?;
                dims = conv.out_dims(dims)?;
                Some(count)
            }
            None => None,
        };
        let mut counts = Vec::with_capacity(blocks.len());
        for b in blocks {
            let ((c1, bn1), (c2, bn2)) = (&b.inner[0], &b.last);
            // The shortcut first, as the block's own forward pass takes it.
            let shortcut = match &b.shortcut {
                ShortcutPath::Projection(conv, bn) => Some(bn.conv_batch_count(conv, dims)?),
                _ => None,
            };
            let count = bn1.conv_batch_count(c1, dims)?;
            dims = c1.out_dims(dims)?;
            counts.push((count, bn2.conv_batch_count(c2, dims)?, shortcut));
        }
        let stem_tensors = stem.map(|(conv, bn)| ops::StemTensors {
            w: conv.weight(),
            params: conv.params(),
            gamma: bn.weight().as_tensor(),
            beta: bn.bias().as_tensor(),
        });
        let tensors: Vec<BasicBlockTensors<'_>> =
            blocks.iter().filter_map(|b| b.run_tensors()).collect();
        let Some(out) = ops::residual_run_train(x, stem_tensors, &tensors, BN_EPS)? else {
            return Ok(None);
        };
        #[cfg(test)]
        tests::RUNS_TAKEN.with(|c| c.set(c.get() + 1));
        if let (Some((_, bn)), Some((m, v)), Some(n)) = (stem, &out.stem_stats, stem_count) {
            #[cfg(test)]
            tests::STEMS_TAKEN.with(|c| c.set(c.get() + 1));
            bn.update_running_stats(m, v, n)?;
        }
        for ((b, stats), (n1, n2, np)) in blocks.iter().zip(&out.block_stats).zip(counts) {
            if let (ShortcutPath::Projection(_, bn), Some((m, v)), Some(n)) =
                (&b.shortcut, &stats.shortcut, np)
            {
                bn.update_running_stats(m, v, n)?;
            }
            let ((m1, v1), (m2, v2)) = (&stats.bn1, &stats.bn2);
            b.inner[0].1.update_running_stats(m1, v1, n1)?;
            b.last.1.update_running_stats(m2, v2, n2)?;
        }
        Ok(Some(out.y))
    }

    /// This block's tensors for a residual run: a basic block (two 3x3
    /// convolutions with padding 1, the second of stride 1, no groups) whose
    /// shortcut is the identity or the zero-padding one.
    fn run_tensors(&self) -> Option<BasicBlockTensors<'_>> {
        let [(c1, bn1)] = self.inner.as_slice() else {
            return None;
        };
        let (c2, bn2) = &self.last;
        let (p1, p2) = (c1.params(), c2.params());
        let k3 = |c: &Conv| matches!(c.weight().dims4(), Ok((_, _, 3, 3)));
        let plain = Conv2dParams {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        if !k3(c1) || !k3(c2) || p2 != plain || p1.padding != 1 || p1.groups != 1 {
            return None;
        }
        let shortcut = match &self.shortcut {
            ShortcutPath::Identity => ShortcutTensors::Identity,
            &ShortcutPath::ZeroPad {
                stride,
                front,
                back,
            } if stride == p1.stride => ShortcutTensors::ZeroPad { front, back },
            ShortcutPath::Projection(conv, bn)
                if conv.params()
                    == (Conv2dParams {
                        stride: p1.stride,
                        padding: 0,
                        groups: 1,
                    }) =>
            {
                ShortcutTensors::Projection {
                    w: conv.weight(),
                    gamma: bn.weight().as_tensor(),
                    beta: bn.bias().as_tensor(),
                }
            }
            _ => return None,
        };
        Some(BasicBlockTensors {
            w1: c1.weight(),
            gamma1: bn1.weight().as_tensor(),
            beta1: bn1.bias().as_tensor(),
            w2: c2.weight(),
            gamma2: bn2.weight().as_tensor(),
            beta2: bn2.bias().as_tensor(),
            stride: p1.stride,
            shortcut,
        })
    }

    /// The block with every batch norm folded into its convolution (see
    /// [`crate::folded`]).
    pub(crate) fn fold(&self) -> Result<FoldedBlock> {
        let fold = |(conv, bn): &(Conv, BatchNorm2d)| FoldedConv::new(conv, bn);
        Ok(FoldedBlock {
            inner: self.inner.iter().map(fold).collect::<Result<_>>()?,
            last: fold(&self.last)?,
            shortcut: match &self.shortcut {
                ShortcutPath::Identity => FoldedShortcut::Identity,
                ShortcutPath::Projection(conv, bn) => {
                    FoldedShortcut::Projection(FoldedConv::new(conv, bn)?)
                }
                &ShortcutPath::ZeroPad {
                    stride,
                    front,
                    back,
                } => FoldedShortcut::ZeroPad {
                    stride,
                    front,
                    back,
                },
            },
        })
    }
}

/// Global average pooling: `(N, C, H, W)` -> `(N, C)`, any spatial size.
/// Features are always averaged (and returned) in f32, also under bf16
/// mixed precision: the head and the loss run in f32.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if matches!(x.dtype(), DType::BF16 | DType::F16) {
        return Ok(x.to_dtype(DType::F32)?.mean((2, 3))?);
    }
    Ok(x.mean((2, 3))?)
}

/// Checks the input is `(N, channels, H, W)` with no zero dimension.
pub(crate) fn check_input(x: &Tensor, channels: usize) -> Result<()> {
    let ok = matches!(x.dims(), &[n, c, h, w] if c == channels && n > 0 && h > 0 && w > 0);
    if ok {
        Ok(())
    } else {
        Err(ModelError::BadInput {
            shape: x.dims().to_vec(),
            expected_channels: channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{ops, Arch, Backbone, BnMode};
    use candle_core::{DType, Device, Tensor};

    thread_local! {
        /// Residual runs taken by [`Block::forward_all`](super::Block::forward_all)
        /// in this thread.
        pub(super) static RUNS_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        /// Stems taken into a residual run in this thread.
        pub(super) static STEMS_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn data(dims: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n as u64)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// Serialises the tests that depend on the process-wide residual-run
    /// switch ([`ops::set_residual_runs`]).
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `arch` with distinct scales and shifts per layer, so that a mixed-up
    /// parameter shows.
    fn backbone(arch: Arch) -> Backbone {
        let b = Backbone::new(arch, &Device::Cpu, 7).unwrap();
        for (i, (_, v)) in b.parameters().into_iter().enumerate() {
            if v.rank() == 1 {
                let c = v.elem_count();
                let d = data((1, 1, 1, c), 10 + i as u64);
                let d = d.reshape(c).unwrap().affine(0.5, 1.0).unwrap();
                v.set(&d).unwrap();
            }
        }
        b
    }

    fn buffers(b: &Backbone) -> Vec<(String, Vec<u32>)> {
        b.buffers()
            .into_iter()
            .map(|(name, v)| (name, bits(&v.as_tensor().to_dtype(DType::F32).unwrap())))
            .collect()
    }

    /// One training-mode forward and backward of `arch`: the features, every
    /// parameter's gradient, the input's gradient where `x` is a variable,
    /// and every running statistic, as bits.
    fn step(arch: Arch, x: &Tensor) -> Vec<(String, Vec<u32>)> {
        let b = backbone(arch);
        let y = b.forward_t(x, BnMode::Train).unwrap();
        let w = data((y.dim(0).unwrap(), y.dim(1).unwrap(), 1, 1), 3)
            .reshape(y.dims())
            .unwrap();
        let loss = (&y * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut out = vec![("features".to_string(), bits(&y))];
        for (name, v) in b.parameters() {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for every parameter");
            out.push((format!("grad {name}"), bits(g)));
        }
        if x.is_variable() {
            let g = grads.get(x).expect("a gradient for the input");
            out.push(("grad input".to_string(), bits(g)));
        }
        out.extend(buffers(&b));
        out
    }

    /// The blocks as one run and one by one give the same features,
    /// gradients and running statistics, bit for bit: with projection
    /// shortcuts (1x1 convolution + BN: `resnet32` and the torchvision
    /// ResNets) and zero-padding ones (`resnet32_ldam`) at the stage
    /// transitions, Winograd F(4x4, 3x3) and F(2x2, 3x3) layers, batches
    /// the F(4x4, 3x3) groups do not divide, a CIFAR ResNet's stem inside
    /// the run (with and without the input's gradient); torchvision's stem,
    /// ahead of a max pool, stays out. Every network is one run.
    #[test]
    fn a_residual_run_gives_the_bits_of_its_blocks_one_by_one() {
        let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let variable = |t: Tensor| {
            candle_core::Var::from_tensor(&t)
                .unwrap()
                .as_tensor()
                .clone()
        };
        for (arch, x, stem) in [
            (Arch::ResNet8, data((3, 3, 32, 32), 1), true),
            (Arch::ResNet20, data((5, 3, 16, 16), 2), true),
            (Arch::ResNet8, variable(data((2, 3, 16, 16), 7)), true),
            (Arch::ResNet32Ldam, data((2, 3, 16, 16), 8), true),
            (Arch::ResNet18, data((2, 3, 32, 32), 3), false),
        ] {
            ops::set_residual_runs(false);
            let before = RUNS_TAKEN.with(std::cell::Cell::get);
            let stems_before = STEMS_TAKEN.with(std::cell::Cell::get);
            let one_by_one = step(arch, &x);
            assert_eq!(
                RUNS_TAKEN.with(std::cell::Cell::get),
                before,
                "{arch:?}: runs off"
            );
            ops::set_residual_runs(true);
            let run = step(arch, &x);
            let runs = RUNS_TAKEN.with(std::cell::Cell::get) - before;
            assert_eq!(runs, 1, "{arch:?}: residual runs taken");
            let stems = STEMS_TAKEN.with(std::cell::Cell::get) - stems_before;
            assert_eq!(
                stems,
                usize::from(stem),
                "{arch:?}: stems taken into the run"
            );
            assert_eq!(one_by_one.len(), run.len());
            for ((name, a), (_, b)) in one_by_one.iter().zip(&run) {
                let differ = a.iter().zip(b).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{arch:?}: {name}: {differ} values differ");
            }
        }
    }

    /// A frozen backbone in training-mode batch norm (cRT's features, no
    /// autograd graph) gives the features and running statistics of the
    /// training forward, bit for bit.
    #[test]
    fn a_frozen_backbone_gives_the_bits_of_the_training_forward() {
        let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        for (arch, x) in [
            (Arch::ResNet8, data((3, 3, 32, 32), 4)),
            (Arch::ResNet20, data((5, 3, 16, 16), 5)),
            (Arch::ResNet18, data((2, 3, 32, 32), 6)),
        ] {
            let run = |frozen: bool| {
                let b = backbone(arch);
                let before = RUNS_TAKEN.with(std::cell::Cell::get);
                let y = if frozen {
                    b.forward_frozen(&x, BnMode::Train).unwrap()
                } else {
                    b.forward_t(&x, BnMode::Train).unwrap()
                };
                // A run is a training op, kept for a backward pass: the
                // frozen forward builds no graph, so it takes none.
                let took = RUNS_TAKEN.with(std::cell::Cell::get) > before;
                assert_eq!(took, !frozen, "{arch:?}: frozen {frozen}, run taken {took}");
                assert!(!frozen || !y.track_op(), "{arch:?}: features detached");
                let mut out = vec![("features".to_string(), bits(&y))];
                out.extend(buffers(&b));
                out
            };
            let (frozen, trained) = (run(true), run(false));
            assert_eq!(frozen.len(), trained.len());
            for ((name, a), (_, b)) in frozen.iter().zip(&trained) {
                let differ = a.iter().zip(b).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{arch:?}: {name}: {differ} values differ");
            }
        }
    }
}
