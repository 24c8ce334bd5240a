//! Hand-computed checks of every head.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lt_heads::{
    pytorch_linear_init, select_tau, tau_grid, Classifier, CrtInit, HeadError, LinearHead, LwsHead,
    NcmConfig, NcmDistance, NcmFeature, NcmHead, TauBias, TauNormHead,
};

type R = Result<(), Box<dyn std::error::Error>>;

fn close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "{a:?} vs {b:?}");
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }
}

/// W = [[3, 4], [1, 0], [0, -2]] (row norms 5, 1, 2), b = [1, 2, 3].
fn toy_linear(varmap: &VarMap) -> LinearHead {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[3f32, 4.0], [1.0, 0.0], [0.0, -2.0]], &dev).unwrap();
    let b = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
    LinearHead::from_tensors(varmap, "fc", &w, &b).unwrap()
}

fn toy_features() -> Tensor {
    Tensor::new(&[[1f32, 2.0], [-1.0, 0.5]], &Device::Cpu).unwrap()
}

#[test]
fn linear_head_logits_by_hand() -> R {
    let head = toy_linear(&VarMap::new());
    let z = head.logits(&toy_features())?.to_vec2::<f32>()?;
    // [1, 2]: [3+8+1, 1+2, -4+3]; [-1, 0.5]: [-3+2+1, -1+2, -1+3]
    close(&z, &[vec![12.0, 3.0, -1.0], vec![0.0, 1.0, 2.0]], 1e-6);
    Ok(())
}

#[test]
fn linear_init_bounds_and_determinism() -> R {
    let (d, c) = (16usize, 7usize);
    let (w, b) = pytorch_linear_init(d, c, 3)?;
    assert_eq!((w.len(), b.len()), (c * d, c));
    let bound = 1.0 / (d as f32).sqrt();
    assert!(w.iter().chain(&b).all(|v| (-bound..bound).contains(v)));
    // Spread over the range, not a constant.
    let max = w.iter().cloned().fold(f32::MIN, f32::max);
    let min = w.iter().cloned().fold(f32::MAX, f32::min);
    assert!(max > 0.5 * bound && min < -0.5 * bound, "{min} {max}");
    assert_eq!(pytorch_linear_init(d, c, 3)?, (w.clone(), b.clone()));
    assert_ne!(pytorch_linear_init(d, c, 4)?.0, w);

    let varmap = VarMap::new();
    let head = LinearHead::new(&varmap, "fc", d, c, 3, &Device::Cpu)?;
    assert_eq!(head.weight().flatten_all()?.to_vec1::<f32>()?, w);
    assert_eq!(head.bias().to_vec1::<f32>()?, b);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["fc.bias", "fc.weight"]);
    assert!(matches!(
        pytorch_linear_init(0, 3, 0),
        Err(HeadError::ZeroSize { .. })
    ));
    Ok(())
}

#[test]
fn crt_reinit_and_finetune() -> R {
    let stage1 = toy_linear(&VarMap::new());
    let vm = VarMap::new();
    let re = LinearHead::for_crt(&vm, "fc", CrtInit::Reinit, &stage1, 9)?;
    let (w, _) = pytorch_linear_init(2, 3, 9)?;
    assert_eq!(re.weight().flatten_all()?.to_vec1::<f32>()?, w);

    let vm2 = VarMap::new();
    let ft = LinearHead::for_crt(&vm2, "fc", CrtInit::Finetune, &stage1, 9)?;
    assert_eq!(
        ft.weight().to_vec2::<f32>()?,
        stage1.weight().to_vec2::<f32>()?
    );
    // The copy owns its storage: changing it leaves stage 1 alone.
    ft.weight_var().set(&Tensor::zeros(
        (3, 2),
        candle_core::DType::F32,
        &Device::Cpu,
    )?)?;
    assert_eq!(stage1.weight().to_vec2::<f32>()?[0], vec![3.0, 4.0]);
    Ok(())
}

#[test]
fn existing_var_is_reused_and_conflicts_are_errors() -> R {
    let vm = VarMap::new();
    let a = LinearHead::new(&vm, "fc", 4, 3, 1, &Device::Cpu)?;
    let b = LinearHead::new(&vm, "fc", 4, 3, 2, &Device::Cpu)?;
    // Same variable, now holding the second initialisation.
    assert_eq!(a.weight().to_vec2::<f32>()?, b.weight().to_vec2::<f32>()?);
    // Rebuilding a head from its own weights is fine.
    LinearHead::from_tensors(&vm, "fc", a.weight(), a.bias())?;
    let err = LinearHead::new(&vm, "fc", 5, 3, 1, &Device::Cpu).unwrap_err();
    assert!(matches!(err, HeadError::VarConflict { .. }), "{err}");
    assert!(err.to_string().contains("fc.weight"), "{err}");
    Ok(())
}

#[test]
fn wrong_feature_shape_is_a_clear_error() {
    let head = toy_linear(&VarMap::new());
    let bad = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = head.logits(&bad).unwrap_err().to_string();
    assert!(
        err.contains("linear head") && err.contains("(N, 2)"),
        "{err}"
    );
    let f64_feats = Tensor::zeros((2, 2), candle_core::DType::F64, &Device::Cpu).unwrap();
    assert!(head
        .logits(&f64_feats)
        .unwrap_err()
        .to_string()
        .contains("f32"));
}

#[test]
fn tau_zero_with_bias_dropped_is_w_f() -> R {
    let head = toy_linear(&VarMap::new());
    let tau = TauNormHead::from_linear(&head, 0.0, TauBias::Drop)?;
    let z = tau.logits(&toy_features())?.to_vec2::<f32>()?;
    close(&z, &[vec![11.0, 1.0, -4.0], vec![-1.0, -1.0, -1.0]], 0.0);
    assert!(tau.bias().is_none());
    Ok(())
}

#[test]
fn tau_one_gives_unit_rows_and_keep_adds_bias() -> R {
    let head = toy_linear(&VarMap::new());
    let tau = TauNormHead::from_linear(&head, 1.0, TauBias::Drop)?;
    close(
        &tau.weight().to_vec2::<f32>()?,
        &[vec![0.6, 0.8], vec![1.0, 0.0], vec![0.0, -1.0]],
        1e-6,
    );
    let z = tau.logits(&toy_features())?.to_vec2::<f32>()?;
    close(&z, &[vec![2.2, 1.0, -2.0], vec![-0.2, -1.0, -0.5]], 1e-6);

    // tau = 2 divides by the squared norms 25, 1, 4; the kept bias is unscaled.
    let kept = TauNormHead::from_linear(&head, 2.0, TauBias::Keep)?;
    let z = kept.logits(&toy_features())?.to_vec2::<f32>()?;
    close(
        &z,
        &[
            vec![11.0 / 25.0 + 1.0, 1.0 + 2.0, -1.0 + 3.0],
            vec![-1.0 / 25.0 + 1.0, -1.0 + 2.0, -0.25 + 3.0],
        ],
        1e-6,
    );
    Ok(())
}

#[test]
fn tau_norm_of_a_cosine_head_is_the_cosine_head_for_every_tau() -> R {
    // Rows of norm 5, 1 and 2: a τ rescaling of these raw rows would change
    // the scores, but the cosine head never scores with their norms.
    let head = toy_linear(&VarMap::new()).cosine(Some(10.0));
    let joint = head.logits(&toy_features())?.to_vec2::<f32>()?;
    // By hand: 10 · f = [1, 2] / √5 against unit rows [0.6, 0.8], [1, 0],
    // [0, -1].
    let r5 = 5f32.sqrt();
    close(&joint[..1], &[vec![22.0 / r5, 10.0 / r5, -20.0 / r5]], 1e-5);
    for tau in [0.0, 0.5, 1.0, 2.0] {
        for bias in [TauBias::Drop, TauBias::Keep] {
            let t = TauNormHead::from_linear(&head, tau, bias)?;
            close(&t.logits(&toy_features())?.to_vec2::<f32>()?, &joint, 0.0);
            assert!(matches!(t.fold()?, lt_heads::Fold::Refused(_)));
            assert_eq!(t.cosine_scale(), Some(10.0));
        }
    }
    Ok(())
}

#[test]
fn tau_errors() -> R {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[1f32, 0.0], [0.0, 0.0]], &dev)?;
    let b = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
    assert!(matches!(
        TauNormHead::new(&w, &b, 1.0, TauBias::Drop),
        Err(HeadError::ZeroNormRow { class: 1, .. })
    ));
    // tau = 0 needs no norm.
    TauNormHead::new(&w, &b, 0.0, TauBias::Drop)?;
    assert!(matches!(
        TauNormHead::new(&w, &b, f64::NAN, TauBias::Drop),
        Err(HeadError::InvalidTau(_))
    ));
    let short = Tensor::zeros(3, candle_core::DType::F32, &dev)?;
    assert!(matches!(
        TauNormHead::new(&w, &short, 1.0, TauBias::Drop),
        Err(HeadError::Shape { .. })
    ));
    Ok(())
}

#[test]
fn tau_grid_is_exact() {
    let g = tau_grid();
    assert_eq!(g.len(), 21);
    assert_eq!(g[0], 0.0);
    assert_eq!(g[3], 0.3);
    assert_eq!(g[7], 0.7);
    assert_eq!(g[20], 2.0);
}

#[test]
fn select_tau_best_then_smallest() -> R {
    assert_eq!(select_tau(&[(0.0, 0.4), (0.5, 0.6), (1.0, 0.5)])?, 0.5);
    // Ties go to the smallest tau whatever the order.
    assert_eq!(select_tau(&[(1.2, 0.6), (0.3, 0.6), (0.9, 0.6)])?, 0.3);
    // NaN scores are skipped.
    assert_eq!(select_tau(&[(0.0, f64::NAN), (2.0, 0.1)])?, 2.0);
    assert!(matches!(select_tau(&[]), Err(HeadError::EmptyTauCurve)));
    assert!(matches!(
        select_tau(&[(0.1, f64::NAN)]),
        Err(HeadError::EmptyTauCurve)
    ));
    Ok(())
}

#[test]
fn lws_with_unit_scales_is_the_linear_head() -> R {
    let joint = toy_linear(&VarMap::new());
    let vm = VarMap::new();
    let lws = LwsHead::from_linear(&vm, "fc", &joint)?;
    assert_eq!(lws.scales().to_vec1::<f32>()?, vec![1.0, 1.0, 1.0]);
    let f = toy_features();
    assert_eq!(
        lws.logits(&f)?.to_vec2::<f32>()?,
        joint.logits(&f)?.to_vec2::<f32>()?
    );
    let mut names: Vec<_> = vm.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["fc.bias", "fc.scales", "fc.weight"]);

    // The scale multiplies the bias too: with zero features z_j = s_j b_j.
    lws.scales_var()
        .set(&Tensor::new(&[2f32, 0.5, -1.0], &Device::Cpu)?)?;
    let zero = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu)?;
    assert_eq!(
        lws.logits(&zero)?.to_vec2::<f32>()?,
        vec![vec![2.0, 1.0, -3.0]]
    );
    let z = lws.logits(&f)?.to_vec2::<f32>()?;
    close(&z, &[vec![24.0, 1.5, 1.0], vec![0.0, 0.5, -2.0]], 1e-6);
    Ok(())
}

#[test]
fn gradient_flows_only_to_lws_scales() -> R {
    let vm = VarMap::new();
    let joint = toy_linear(&vm);
    // Built in the same VarMap, so W and b are the very variables of the joint head.
    let lws = LwsHead::from_linear(&vm, "fc", &joint)?;
    let f = toy_features();
    let loss = lws.logits(&f)?.sum_all()?;
    let grads = loss.backward()?;
    assert!(grads.get(lws.weight_var()).is_none());
    assert!(grads.get(lws.bias_var()).is_none());
    assert!(grads.get(joint.weight_var()).is_none());
    assert!(grads.get(joint.bias_var()).is_none());
    // d/ds_j sum_n s_j z_nj = sum_n z_nj = [12+0, 3+1, -1+2].
    let gs = grads.get(lws.scales_var()).expect("scales get a gradient");
    assert_eq!(gs.to_vec1::<f32>()?, vec![12.0, 4.0, 1.0]);

    // Whereas the plain linear head trains W and b.
    let grads = joint.logits(&f)?.sum_all()?.backward()?;
    assert!(grads.get(joint.weight_var()).is_some());
    assert!(grads.get(joint.bias_var()).is_some());
    Ok(())
}

/// Training features: class 0 at (0, 0) and (2, 0); class 1 at (0, 4).
/// Mean mu = (2/3, 4/3).
fn ncm_toy() -> (Tensor, [u32; 3]) {
    let f = Tensor::new(&[[0f32, 0.0], [2.0, 0.0], [0.0, 4.0]], &Device::Cpu).unwrap();
    (f, [0, 0, 1])
}

#[test]
fn ncm_cl2n_l2_by_hand() -> R {
    let (f, labels) = ncm_toy();
    let ncm = NcmHead::fit(&f, &labels, 2, NcmConfig::default())?;
    // Centred: (-2/3, -4/3), (4/3, -4/3), (-2/3, 8/3); norms 2√5/3, 4√2/3, 2√17/3.
    // Normalised: (-1/√5, -2/√5), (1/√2, -1/√2), (-1/√17, 4/√17).
    let s5 = 5f32.sqrt();
    let s2 = 2f32.sqrt();
    let s17 = 17f32.sqrt();
    let c0 = [(-1.0 / s5 + 1.0 / s2) / 2.0, (-2.0 / s5 - 1.0 / s2) / 2.0];
    let c1 = [-1.0 / s17, 4.0 / s17];
    close(
        &ncm.centroids().to_vec2::<f32>()?,
        &[c0.to_vec(), c1.to_vec()],
        1e-6,
    );
    // Not re-normalised: the class-0 centroid is shorter than 1.
    assert!(c0[0].hypot(c0[1]) < 0.9);
    close(
        &[ncm.feat_mean().to_vec1::<f32>()?],
        &[vec![2.0 / 3.0, 4.0 / 3.0]],
        1e-6,
    );

    // Query (2/3 + 3, 4/3): centred (3, 0), normalised (1, 0).
    let q = Tensor::new(&[[2f32 / 3.0 + 3.0, 4.0 / 3.0]], &Device::Cpu)?;
    let d0 = (1.0 - c0[0]).powi(2) + c0[1].powi(2);
    let d1 = (1.0 - c1[0]).powi(2) + c1[1].powi(2);
    close(&ncm.logits(&q)?.to_vec2::<f32>()?, &[vec![-d0, -d1]], 1e-5);
    Ok(())
}

#[test]
fn ncm_other_transforms_by_hand() -> R {
    let (f, labels) = ncm_toy();
    let un = NcmHead::fit(
        &f,
        &labels,
        2,
        NcmConfig {
            feature: NcmFeature::Un,
            distance: NcmDistance::L2,
        },
    )?;
    close(
        &un.centroids().to_vec2::<f32>()?,
        &[vec![1.0, 0.0], vec![0.0, 4.0]],
        0.0,
    );
    let q = Tensor::new(&[[1f32, 1.0], [3.0, 4.0]], &Device::Cpu)?;
    // ||(1,1)-(1,0)||² = 1, ||(1,1)-(0,4)||² = 10; (3,4): 4+16 = 20, 9+0 = 9.
    close(
        &un.logits(&q)?.to_vec2::<f32>()?,
        &[vec![-1.0, -10.0], vec![-20.0, -9.0]],
        1e-5,
    );

    let l2n_cos = NcmHead::fit(
        &f,
        &labels,
        2,
        NcmConfig {
            feature: NcmFeature::L2n,
            distance: NcmDistance::Cos,
        },
    )?;
    // The zero feature stays zero (norm clamped), so c0 = ((0,0)+(1,0))/2 = (0.5, 0).
    close(
        &l2n_cos.centroids().to_vec2::<f32>()?,
        &[vec![0.5, 0.0], vec![0.0, 1.0]],
        0.0,
    );
    // Query (3, 4) -> (0.6, 0.8); scores x.c / d with d = 2.
    close(
        &l2n_cos.logits(&q.narrow(0, 1, 1)?)?.to_vec2::<f32>()?,
        &[vec![0.6 * 0.5 / 2.0, 0.8 / 2.0]],
        1e-6,
    );
    Ok(())
}

#[test]
fn ncm_fit_errors() {
    let (f, _) = ncm_toy();
    let cfg = NcmConfig::default();
    assert!(matches!(
        NcmHead::fit(&f, &[0, 0, 2], 2, cfg),
        Err(HeadError::LabelOutOfRange {
            row: 2,
            label: 2,
            ..
        })
    ));
    assert!(matches!(
        NcmHead::fit(&f, &[0, 0, 0], 2, cfg),
        Err(HeadError::EmptyClass { class: 1 })
    ));
    assert!(matches!(
        NcmHead::fit(&f, &[0, 1], 2, cfg),
        Err(HeadError::LabelCount { labels: 2, rows: 3 })
    ));
    let nan = Tensor::new(&[[0f32, f32::NAN]], &Device::Cpu).unwrap();
    assert!(matches!(
        NcmHead::fit(&nan, &[0], 1, cfg),
        Err(HeadError::NonFiniteFeature { row: 0, col: 1 })
    ));
    let flat = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
    assert!(matches!(
        NcmHead::fit(&flat, &[0, 0], 1, cfg),
        Err(HeadError::Shape { .. })
    ));
}

#[test]
fn ncm_save_load_round_trip() -> R {
    let (f, labels) = ncm_toy();
    let cfg = NcmConfig {
        feature: NcmFeature::L2n,
        distance: NcmDistance::Cos,
    };
    let ncm = NcmHead::fit(&f, &labels, 2, cfg)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ncm.safetensors");
    ncm.save(&path)?;
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ncm.safetensors"], "no temporary file is left");
    let back = NcmHead::load(&path, &Device::Cpu)?;
    assert_eq!(back.config(), cfg);
    assert_eq!(
        back.centroids().to_vec2::<f32>()?,
        ncm.centroids().to_vec2::<f32>()?
    );
    assert_eq!(
        back.feat_mean().to_vec1::<f32>()?,
        ncm.feat_mean().to_vec1::<f32>()?
    );
    let q = Tensor::new(&[[0.3f32, -1.0]], &Device::Cpu)?;
    assert_eq!(
        back.logits(&q)?.to_vec2::<f32>()?,
        ncm.logits(&q)?.to_vec2::<f32>()?
    );

    // A safetensors file that is not an NCM file names itself.
    let other = dir.path().join("other.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("x".to_string(), q)]),
        &other,
    )?;
    let err = NcmHead::load(&other, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("other.safetensors") && err.contains("format"),
        "{err}"
    );
    let missing = NcmHead::load(dir.path().join("nope"), &Device::Cpu).unwrap_err();
    assert!(matches!(missing, HeadError::Io { .. }));
    Ok(())
}

#[test]
fn heads_work_as_trait_objects() -> R {
    let joint = toy_linear(&VarMap::new());
    let (f, labels) = ncm_toy();
    let heads: Vec<Box<dyn Classifier>> = vec![
        Box::new(joint.clone()),
        Box::new(NcmHead::fit(&f, &labels, 2, NcmConfig::default())?),
        Box::new(TauNormHead::from_linear(&joint, 0.5, TauBias::Drop)?),
        Box::new(LwsHead::from_linear(&VarMap::new(), "fc", &joint)?),
    ];
    let expect_c = [3, 2, 3, 3];
    for (h, c) in heads.iter().zip(expect_c) {
        assert_eq!(h.logits(&f)?.dims(), &[3, c]);
    }
    Ok(())
}

#[test]
fn ncm_fit_across_host_blocks() -> R {
    // Wide enough that the features are copied to the host two rows at a time.
    let d = 1usize << 19;
    let rows: Vec<f32> = (0..5).flat_map(|i| vec![i as f32 + 1.0; d]).collect();
    let f = Tensor::from_vec(rows, (5, d), &Device::Cpu)?;
    let ncm = NcmHead::fit(&f, &[0, 0, 1, 1, 1], 2, NcmConfig::default())?;
    // Mean 3; centred rows -2, -1, 0, 1, 2 (constant); normalised -1/√d, -1/√d,
    // 0, 1/√d, 1/√d.
    let s = 1.0 / (d as f32).sqrt();
    let c = ncm.centroids().to_vec2::<f32>()?;
    assert!(c[0].iter().all(|&v| (v + s).abs() < 1e-9));
    assert!(c[1].iter().all(|&v| (v - 2.0 * s / 3.0).abs() < 1e-9));
    assert!(ncm.feat_mean().to_vec1::<f32>()?.iter().all(|&v| v == 3.0));

    let mut bad: Vec<f32> = vec![0.0; 5 * d];
    bad[4 * d + 7] = f32::INFINITY;
    let bad = Tensor::from_vec(bad, (5, d), &Device::Cpu)?;
    assert!(matches!(
        NcmHead::fit(&bad, &[0, 0, 1, 1, 1], 2, NcmConfig::default()),
        Err(HeadError::NonFiniteFeature { row: 4, col: 7 })
    ));
    Ok(())
}
