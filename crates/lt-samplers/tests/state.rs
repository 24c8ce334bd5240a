//! Saving and restoring: a resumed run draws exactly what an uninterrupted
//! one would, on any world size; a state from another run is refused.

mod common;

use common::*;
use lt_samplers::{EpochLength, Sampler, SamplerConfig, SamplerError, SamplerState, Strategy};

fn through_json(state: &SamplerState) -> SamplerState {
    let json = serde_json::to_string(state).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn labels() -> Vec<u32> {
    // B = 12 does not divide the class sizes, so cycles stop mid-pass at
    // epoch ends.
    labels_from_counts(&long_tailed_counts(10, 50, 10.0))
}

fn cfg(strategy: &Strategy, shuffle_in_batch: bool) -> SamplerConfig {
    SamplerConfig {
        strategy: strategy.clone(),
        batch_size: 12,
        seed: 5,
        shuffle_in_batch,
        ..SamplerConfig::default()
    }
}

#[test]
fn resume_equals_uninterrupted() {
    let labels = labels();
    for strategy in all_strategies() {
        for shuffle_in_batch in [false, true] {
            let config = cfg(&strategy, shuffle_in_batch);
            let mut straight = Sampler::new(&labels, 10, config.clone()).unwrap();
            let expected: Vec<_> = (0..6).map(|_| straight.next_epoch()).collect();
            for stop in [0, 1, 3] {
                let mut first = Sampler::new(&labels, 10, config.clone()).unwrap();
                for _ in 0..stop {
                    first.next_epoch();
                }
                let saved = through_json(&first.state());
                assert_eq!(saved, first.state());
                assert_eq!(saved.epochs_drawn(), stop);
                let mut resumed = Sampler::new(&labels, 10, config.clone()).unwrap();
                resumed.restore(saved).unwrap();
                assert_eq!(resumed.epochs_drawn(), stop);
                for (e, epoch) in expected.iter().enumerate().skip(stop) {
                    assert_eq!(
                        &resumed.next_epoch(),
                        epoch,
                        "{strategy}: stop {stop}, epoch {e}"
                    );
                }
            }
        }
    }
}

/// A state saved by a single process resumes on 3 ranks (and back): each
/// rank continues with its slice of the same global stream.
#[test]
fn resume_on_another_world_size() {
    let labels = labels();
    for strategy in all_strategies() {
        let config = cfg(&strategy, true);
        let mut straight = Sampler::new(&labels, 10, config.clone()).unwrap();
        let expected: Vec<_> = (0..4).map(|_| straight.next_epoch()).collect();

        let mut single = Sampler::new(&labels, 10, config.clone()).unwrap();
        single.next_epoch();
        let saved = through_json(&single.state());
        let mut ranks: Vec<Sampler> = (0..3)
            .map(|rank| {
                let mut s = Sampler::new(
                    &labels,
                    10,
                    SamplerConfig {
                        rank,
                        world_size: 3,
                        ..config.clone()
                    },
                )
                .unwrap();
                s.restore(saved.clone()).unwrap();
                s
            })
            .collect();
        for epoch in &expected[1..3] {
            let shards: Vec<_> = ranks.iter_mut().map(|s| s.next_epoch()).collect();
            for (b, batch) in epoch.iter().enumerate() {
                let joined: Vec<usize> = shards.iter().flat_map(|s| s[b].iter().copied()).collect();
                assert_eq!(&joined, batch, "{strategy}");
            }
        }
        // Back to one process from rank 2's state.
        let mut back = Sampler::new(&labels, 10, config.clone()).unwrap();
        back.restore(through_json(&ranks[2].state())).unwrap();
        assert_eq!(back.next_epoch(), expected[3], "{strategy}");
    }
}

#[test]
fn foreign_states_are_refused() {
    let labels = labels();
    let config = cfg(&Strategy::class_balanced(), false);
    let mut sampler = Sampler::new(&labels, 10, config.clone()).unwrap();
    sampler.next_epoch();
    let saved = sampler.state();

    let field_of = |err: SamplerError| match err {
        SamplerError::StateMismatch { field, .. } => field,
        other => panic!("expected a mismatch, got {other}"),
    };
    let other = |config: SamplerConfig| Sampler::new(&labels, 10, config).unwrap();
    let cases: Vec<(&str, SamplerConfig)> = vec![
        (
            "seed",
            SamplerConfig {
                seed: 6,
                ..config.clone()
            },
        ),
        ("strategy", cfg(&Strategy::SquareRoot, false)),
        (
            "batch_size",
            SamplerConfig {
                batch_size: 24,
                ..config.clone()
            },
        ),
        (
            "epoch_length",
            SamplerConfig {
                epoch_length: EpochLength::Ceil,
                ..config.clone()
            },
        ),
        (
            "shuffle_in_batch",
            SamplerConfig {
                shuffle_in_batch: true,
                ..config.clone()
            },
        ),
    ];
    for (field, config) in cases {
        let err = other(config).restore(saved.clone()).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
        assert_eq!(field_of(err), field);
    }
    // Same size, other labels.
    let mut swapped = labels.clone();
    swapped.swap(0, labels.iter().position(|&l| l != labels[0]).unwrap());
    let err = Sampler::new(&swapped, 10, config.clone())
        .unwrap()
        .restore(saved.clone())
        .unwrap_err();
    assert_eq!(field_of(err), "labels_fingerprint");
    let err = Sampler::new(&labels[1..], 10, config.clone())
        .unwrap()
        .restore(saved.clone())
        .unwrap_err();
    assert_eq!(field_of(err), "num_samples");
    let mut more_classes = labels.clone();
    more_classes.push(10);
    let err = Sampler::new(&more_classes[1..], 11, config.clone())
        .unwrap()
        .restore(saved.clone())
        .unwrap_err();
    assert_eq!(field_of(err), "num_classes");
}

#[test]
fn corrupted_states_are_refused_and_leave_the_sampler_unchanged() {
    let labels = labels();
    let config = cfg(&Strategy::class_balanced(), false);
    let mut sampler = Sampler::new(&labels, 10, config.clone()).unwrap();
    sampler.next_epoch();
    let json = serde_json::to_value(sampler.state()).unwrap();

    let mut reference = Sampler::new(&labels, 10, config.clone()).unwrap();
    reference.next_epoch();
    let mut target = Sampler::new(&labels, 10, config.clone()).unwrap();
    target.next_epoch();

    let mut bad = json.clone();
    bad["class_items"][0]["next"] = serde_json::json!(1_000_000);
    let state: SamplerState = serde_json::from_value(bad).unwrap();
    let err = target.restore(state).unwrap_err();
    assert!(matches!(err, SamplerError::InvalidState { .. }), "{err}");
    assert!(err.to_string().contains("class_items[0]"), "{err}");

    let mut bad = json.clone();
    bad["class_items"].as_array_mut().unwrap().pop();
    let state: SamplerState = serde_json::from_value(bad).unwrap();
    assert!(matches!(
        target.restore(state),
        Err(SamplerError::InvalidState { .. })
    ));

    let mut bad = json.clone();
    bad["class_order"] = serde_json::Value::Null;
    let state: SamplerState = serde_json::from_value(bad).unwrap();
    assert!(matches!(
        target.restore(state),
        Err(SamplerError::InvalidState { .. })
    ));

    let mut bad = json.clone();
    bad["format"] = serde_json::json!(99);
    let state: SamplerState = serde_json::from_value(bad).unwrap();
    assert!(target
        .restore(state)
        .unwrap_err()
        .to_string()
        .contains("format"));

    let mut bad = json.clone();
    bad["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<SamplerState>(bad).is_err());

    // Nothing above changed the target.
    assert_eq!(target.epochs_drawn(), 1);
    assert_eq!(target.next_epoch(), reference.next_epoch());
}
