//! Each strategy draws the class distribution it promises, with the
//! structure the reference sampler has.

mod common;

use common::*;
use lt_samplers::{CbDraw, EpochLength, Sampler, SamplerConfig, Strategy};

/// CIFAR-10-LT, rho = 100: 5000 ... 50, N = 12,406.
fn cifar10_lt() -> (Vec<usize>, Vec<u32>) {
    let counts = long_tailed_counts(10, 5000, 100.0);
    assert_eq!(counts, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]);
    let labels = labels_from_counts(&counts);
    (counts, labels)
}

/// Probabilities p_j proportional to n_j^q.
fn power_law(counts: &[usize], q: f64) -> Vec<f64> {
    let w: Vec<f64> = counts.iter().map(|&n| (n as f64).powf(q)).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

/// For every strategy with a fixed target, the class frequencies over four
/// epochs pass a chi-square test against p_j, and fail it against the
/// distribution of a q off by 0.25 (so the test can tell them apart).
#[test]
fn class_frequencies_match_the_target() {
    let (counts, labels) = cifar10_lt();
    let cases: Vec<(Strategy, f64)> = vec![
        (Strategy::InstanceBalanced, 1.0),
        (Strategy::class_balanced(), 0.0),
        (
            Strategy::ClassBalanced {
                draw: CbDraw::ClassUniformIid,
                per_class: 1,
            },
            0.0,
        ),
        (
            Strategy::ClassBalanced {
                draw: CbDraw::ClassUniformIid,
                per_class: 4,
            },
            0.0,
        ),
        (Strategy::SquareRoot, 0.5),
        (Strategy::Power { q: 0.5 }, 0.5),
        (Strategy::Power { q: 0.25 }, 0.25),
        (Strategy::Power { q: -0.5 }, -0.5),
    ];
    for (seed, (strategy, q)) in cases.into_iter().enumerate() {
        let mut sampler =
            Sampler::new(&labels, 10, config(strategy.clone(), 128, seed as u64)).unwrap();
        let target = sampler.class_probabilities(0);
        let expected = power_law(&counts, q);
        for (a, b) in target.iter().zip(&expected) {
            assert!(
                (a - b).abs() < 1e-12,
                "{strategy}: target {target:?} vs {expected:?}"
            );
        }
        let drawn = draw_flat(&mut sampler, 4);
        assert_eq!(drawn.len(), 4 * (12_406 / 128) * 128);
        let hist = class_histogram(&drawn, &labels, 10);
        let (ok, stat, crit) = fits(&hist, &target);
        assert!(
            ok,
            "{strategy}: chi2 {stat:.1} > {crit:.1}, counts {hist:?}"
        );
        let (ok_wrong, stat_wrong, _) = fits(&hist, &power_law(&counts, q + 0.25));
        assert!(
            !ok_wrong,
            "{strategy}: chi2 {stat_wrong:.1} against q + 0.25 should reject"
        );
    }
}

/// The progressive sampler is instance-balanced in epoch 0, fully
/// class-balanced in the last epoch T - 1, and follows p_j(t) in between.
#[test]
fn progressive_moves_from_instance_to_class_balance() {
    let (counts, labels) = cifar10_lt();
    let total_epochs = 5;
    let mut sampler = Sampler::new(
        &labels,
        10,
        config(Strategy::progressively_balanced(total_epochs), 128, 11),
    )
    .unwrap();
    let n: usize = counts.iter().sum();
    // n_c / N counted straight from the labels, independently of the library.
    let mut label_counts = [0usize; 10];
    for &label in &labels {
        label_counts[label as usize] += 1;
    }
    let instance_shares: Vec<f64> = label_counts
        .iter()
        .map(|&n_c| n_c as f64 / labels.len() as f64)
        .collect();
    for t in 0..total_epochs {
        let target = sampler.class_probabilities(t);
        let l = t as f64 / (total_epochs - 1) as f64;
        for (j, &p) in target.iter().enumerate() {
            let formula = (1.0 - l) * counts[j] as f64 / n as f64 + l / 10.0;
            assert!((p - formula).abs() < 1e-12);
        }
        if t == 0 {
            // Epoch 0 is instance-balanced: p_c = n_c / N for every class.
            assert_eq!(target.len(), instance_shares.len());
            for (c, (&p, &share)) in target.iter().zip(&instance_shares).enumerate() {
                assert!(
                    (p - share).abs() < 1e-12,
                    "epoch 0, class {c}: p = {p} but n_c / N = {share}"
                );
            }
            assert!((target[0] - 5000.0 / 12_406.0).abs() < 1e-12);
        }
        if t == total_epochs - 1 {
            assert!(target.iter().all(|&p| (p - 0.1).abs() < 1e-12));
        }
        let epoch: Vec<usize> = sampler.next_epoch().into_iter().flatten().collect();
        let hist = class_histogram(&epoch, &labels, 10);
        let (ok, stat, crit) = fits(&hist, &target);
        assert!(ok, "epoch {t}: chi2 {stat:.1} > {crit:.1}, counts {hist:?}");
        // The first epoch is not class-balanced and the last is not instance-balanced.
        if t == 0 {
            assert!(!fits(&hist, &[0.1; 10]).0);
        }
        if t == total_epochs - 1 {
            assert!(!fits(&hist, &instance_shares).0);
        }
    }
}

/// Under the `t_over_t` switch the last planned epoch is still not uniform.
#[test]
fn progressive_t_over_t_never_reaches_balance() {
    let (counts, labels) = cifar10_lt();
    let strategy = Strategy::ProgressivelyBalanced {
        total_epochs: 4,
        lambda: lt_samplers::PbLambda::TOverT,
    };
    let sampler = Sampler::new(&labels, 10, config(strategy, 128, 0)).unwrap();
    let n: usize = counts.iter().sum();
    let last = sampler.class_probabilities(3);
    let expected = 0.25 * 5000.0 / n as f64 + 0.75 / 10.0;
    assert!((last[0] - expected).abs() < 1e-12);
    assert!(sampler
        .class_probabilities(4)
        .iter()
        .all(|&p| (p - 0.1).abs() < 1e-12));
}

/// Square-root: every instance is drawn with probability proportional to
/// n_c^(-1/2) (the reference's per-item weight), with replacement.
#[test]
fn square_root_draws_instances_with_item_weights() {
    let counts = [40usize, 10, 4];
    let labels = labels_from_counts(&counts);
    let cfg = SamplerConfig {
        strategy: Strategy::SquareRoot,
        batch_size: 54,
        epoch_length: EpochLength::Batches(2000),
        seed: 3,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(&labels, 3, cfg).unwrap();
    let drawn = draw_flat(&mut sampler, 1);
    let mut per_item = vec![0usize; labels.len()];
    for &i in &drawn {
        per_item[i] += 1;
    }
    let weights: Vec<f64> = labels
        .iter()
        .map(|&c| (counts[c as usize] as f64).powf(-0.5))
        .collect();
    let total: f64 = weights.iter().sum();
    let p: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let (ok, stat, crit) = fits(&per_item, &p);
    assert!(ok, "per-item chi2 {stat:.1} > {crit:.1}");
    // With replacement: the first batch of 54 repeats some item.
    let first: std::collections::BTreeSet<_> = drawn[..54].iter().collect();
    assert!(first.len() < 54);
}

/// Class-uniform i.i.d.: the item within a class is uniform (with replacement).
#[test]
fn class_uniform_iid_items_are_uniform_within_class() {
    let counts = [40usize, 10, 4];
    let labels = labels_from_counts(&counts);
    let cfg = SamplerConfig {
        strategy: Strategy::ClassBalanced {
            draw: CbDraw::ClassUniformIid,
            per_class: 1,
        },
        batch_size: 60,
        epoch_length: EpochLength::Batches(2000),
        seed: 5,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(&labels, 3, cfg).unwrap();
    let drawn = draw_flat(&mut sampler, 1);
    let mut per_item = vec![0usize; labels.len()];
    for &i in &drawn {
        per_item[i] += 1;
    }
    let p: Vec<f64> = labels
        .iter()
        .map(|&c| 1.0 / (3.0 * counts[c as usize] as f64))
        .collect();
    let (ok, stat, crit) = fits(&per_item, &p);
    assert!(ok, "per-item chi2 {stat:.1} > {crit:.1}");
}

/// The reference class-balanced sampler: every pass over the classes visits
/// each class exactly once, each visit takes `per_class` consecutive items
/// of one class, and each class's items come in reshuffled passes that hold
/// every item once. The cycles run on across epochs.
#[test]
fn class_cycle_structure() {
    let counts = [23usize, 9, 5, 3, 2, 1, 7];
    let labels = labels_from_counts(&counts);
    let classes = counts.len();
    for per_class in [4usize, 1, 2] {
        let batch = 4 * per_class;
        let mut sampler = Sampler::new(
            &labels,
            classes,
            config(
                Strategy::ClassBalanced {
                    draw: CbDraw::ClassCycle,
                    per_class,
                },
                batch,
                21,
            ),
        )
        .unwrap();
        // N = 50 so floor(50 / batch) batches; batch is a multiple of
        // per_class, so no visit is cut at an epoch's end.
        let stream = draw_flat(&mut sampler, 40);
        assert_eq!(stream.len(), 40 * (50 / batch) * batch);
        let visits: Vec<usize> = stream
            .chunks_exact(per_class)
            .map(|run| {
                let c = labels[run[0]];
                assert!(
                    run.iter().all(|&i| labels[i] == c),
                    "a visit mixes classes: {run:?}"
                );
                c as usize
            })
            .collect();
        for pass in visits.chunks_exact(classes) {
            let mut sorted = pass.to_vec();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..classes).collect::<Vec<_>>(),
                "a class pass repeats a class"
            );
        }
        let passes: std::collections::BTreeSet<&[usize]> = visits.chunks_exact(classes).collect();
        assert!(passes.len() > 1, "the class order is never reshuffled");
        for (c, &n) in counts.iter().enumerate() {
            let items: Vec<usize> = stream
                .iter()
                .copied()
                .filter(|&i| labels[i] as usize == c)
                .collect();
            let mut expected: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i] as usize == c)
                .collect();
            expected.sort_unstable();
            for pass in items.chunks_exact(n) {
                let mut sorted = pass.to_vec();
                sorted.sort_unstable();
                assert_eq!(sorted, expected, "class {c}: a pass repeats an item");
            }
            if n >= 3 {
                let orders: std::collections::BTreeSet<&[usize]> = items.chunks_exact(n).collect();
                assert!(orders.len() > 1, "class {c} is never reshuffled");
            }
        }
    }
}

/// With 4 per visit and B = 512 as in the reference, a batch is 128 visits
/// of 4: its class counts are multiples of 4.
#[test]
fn class_cycle_batches_are_runs_of_four() {
    let counts = long_tailed_counts(100, 500, 100.0);
    let labels = labels_from_counts(&counts);
    let mut sampler =
        Sampler::new(&labels, 100, config(Strategy::class_balanced(), 512, 1)).unwrap();
    let epoch = sampler.next_epoch();
    assert_eq!(epoch.len(), 10_847 / 512);
    for batch in &epoch {
        let hist = class_histogram(batch, &labels, 100);
        assert!(hist.iter().all(|&h| h % 4 == 0), "{hist:?}");
        // 128 consecutive visits touch at most three passes of 100 classes.
        assert!(hist.iter().all(|&h| h <= 12), "{hist:?}");
    }
}

/// Instance-balanced: each epoch is a prefix of a fresh permutation, each
/// index at most once, floor(N / B) * B of them; epochs differ.
#[test]
fn instance_balanced_epoch_is_a_permutation_prefix() {
    let (_, labels) = cifar10_lt();
    let mut sampler =
        Sampler::new(&labels, 10, config(Strategy::InstanceBalanced, 128, 9)).unwrap();
    let first: Vec<usize> = sampler.next_epoch().into_iter().flatten().collect();
    let second: Vec<usize> = sampler.next_epoch().into_iter().flatten().collect();
    for epoch in [&first, &second] {
        assert_eq!(epoch.len(), (12_406 / 128) * 128);
        let mut seen = vec![false; labels.len()];
        for &i in epoch.iter() {
            assert!(!seen[i], "index {i} drawn twice in an epoch");
            seen[i] = true;
        }
    }
    assert_ne!(first, second);

    // B divides N: the epoch is a full permutation.
    let labels: Vec<u32> = (0..96).map(|i| (i % 3) as u32).collect();
    let mut sampler = Sampler::new(&labels, 3, config(Strategy::InstanceBalanced, 12, 0)).unwrap();
    let mut all: Vec<usize> = sampler.next_epoch().into_iter().flatten().collect();
    assert_ne!(all, (0..96).collect::<Vec<_>>());
    all.sort_unstable();
    assert_eq!(all, (0..96).collect::<Vec<_>>());
}

/// Epoch lengths: floor, ceil (filled from a further permutation), nominal
/// n_max * C items and a fixed number of batches.
#[test]
fn epoch_lengths() {
    let counts = [6usize, 3, 1];
    let labels = labels_from_counts(&counts);
    let make = |epoch_length, strategy| {
        Sampler::new(
            &labels,
            3,
            SamplerConfig {
                strategy,
                batch_size: 4,
                epoch_length,
                ..SamplerConfig::default()
            },
        )
        .unwrap()
    };
    let mut floor = make(EpochLength::Floor, Strategy::InstanceBalanced);
    assert_eq!(floor.num_batches(), 2);
    assert_eq!(floor.next_epoch().len(), 2);
    let mut ceil = make(EpochLength::Ceil, Strategy::InstanceBalanced);
    assert_eq!(ceil.num_batches(), 3);
    let epoch: Vec<usize> = ceil.next_epoch().into_iter().flatten().collect();
    assert_eq!(epoch.len(), 12);
    let mut head = epoch[..10].to_vec();
    head.sort_unstable();
    assert_eq!(head, (0..10).collect::<Vec<_>>());
    assert_ne!(epoch[10], epoch[11]);
    // n_max * C = 18 items -> 4 whole batches.
    let mut nominal = make(EpochLength::Nominal, Strategy::class_balanced());
    assert_eq!(nominal.num_batches(), 4);
    assert_eq!(nominal.next_epoch().len(), 4);
    let mut fixed = make(EpochLength::Batches(7), Strategy::SquareRoot);
    let epoch = fixed.next_epoch();
    assert_eq!(epoch.len(), 7);
    assert!(epoch.iter().all(|b| b.len() == 4));
}

/// Same seed, same stream; another seed, another stream; and the stream of
/// a small config is pinned so that a platform or dependency change that
/// alters it is caught.
#[test]
fn streams_are_deterministic_and_pinned() {
    let labels = labels_from_counts(&[6, 3, 2]);
    for strategy in all_strategies() {
        let draw = |seed| {
            let mut s = Sampler::new(&labels, 3, config(strategy.clone(), 4, seed)).unwrap();
            draw_flat(&mut s, 3)
        };
        assert_eq!(draw(1), draw(1), "{strategy}");
        assert_ne!(draw(1), draw(2), "{strategy}");
    }
    let pinned = |strategy: Strategy| {
        let mut s = Sampler::new(&labels, 3, config(strategy, 4, 0)).unwrap();
        draw_flat(&mut s, 2)
    };
    assert_eq!(
        pinned(Strategy::InstanceBalanced),
        [2, 4, 5, 7, 0, 6, 3, 10, 7, 9, 0, 3, 2, 8, 4, 1]
    );
    assert_eq!(
        pinned(Strategy::class_balanced()),
        [8, 1, 8, 1, 10, 3, 9, 3, 0, 7, 2, 5, 8, 1, 1, 8]
    );
    assert_eq!(
        pinned(Strategy::SquareRoot),
        [2, 5, 2, 6, 1, 0, 0, 10, 10, 3, 9, 6, 5, 3, 5, 10]
    );
    assert_eq!(
        pinned(Strategy::progressively_balanced(2)),
        [0, 7, 2, 10, 5, 4, 6, 3, 8, 1, 9, 7, 3, 9, 0, 8]
    );
}
