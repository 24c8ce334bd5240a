//! Bad input gets a clear error, and configs read from TOML with defaults.

mod common;

use common::*;
use lt_samplers::{CbDraw, EpochLength, PbLambda, Sampler, SamplerConfig, SamplerError, Strategy};

fn err(labels: &[u32], classes: usize, config: SamplerConfig) -> SamplerError {
    Sampler::new(labels, classes, config).unwrap_err()
}

#[test]
fn bad_input_errors() {
    let labels = [0u32, 1, 1, 2, 2, 2];
    let base = SamplerConfig {
        batch_size: 2,
        ..SamplerConfig::default()
    };
    assert_eq!(err(&[], 3, base.clone()), SamplerError::EmptyLabels);
    assert_eq!(
        err(&[0, 3, 1], 3, base.clone()),
        SamplerError::LabelOutOfRange {
            index: 1,
            label: 3,
            num_classes: 3
        }
    );
    assert!(matches!(
        err(&labels, 0, base.clone()),
        SamplerError::LabelOutOfRange { index: 0, .. }
    ));
    assert_eq!(
        err(
            &labels,
            3,
            SamplerConfig {
                batch_size: 0,
                ..base.clone()
            }
        ),
        SamplerError::ZeroBatchSize
    );
    assert_eq!(
        err(
            &labels,
            3,
            SamplerConfig {
                world_size: 0,
                ..base.clone()
            }
        ),
        SamplerError::ZeroWorldSize
    );
    assert_eq!(
        err(
            &labels,
            3,
            SamplerConfig {
                rank: 2,
                world_size: 2,
                ..base.clone()
            }
        ),
        SamplerError::RankOutOfRange {
            rank: 2,
            world_size: 2
        }
    );
    let e = err(
        &labels,
        3,
        SamplerConfig {
            batch_size: 6,
            world_size: 4,
            ..base.clone()
        },
    );
    assert_eq!(
        e,
        SamplerError::BatchNotDivisible {
            batch_size: 6,
            world_size: 4
        }
    );
    assert!(e.to_string().contains("batch_size 6") && e.to_string().contains("world_size 4"));

    // Class-balanced cannot draw an empty class; the others give it p = 0.
    let cb = SamplerConfig {
        strategy: Strategy::class_balanced(),
        ..base.clone()
    };
    let e = err(&labels, 4, cb.clone());
    assert!(
        matches!(e, SamplerError::EmptyClass { class: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("class 3"));
    for strategy in [
        Strategy::InstanceBalanced,
        Strategy::SquareRoot,
        Strategy::Power { q: 0.0 },
        Strategy::progressively_balanced(3),
    ] {
        let mut s = Sampler::new(
            &labels,
            4,
            SamplerConfig {
                strategy: strategy.clone(),
                ..base.clone()
            },
        )
        .unwrap();
        assert_eq!(s.class_probabilities(0)[3], 0.0, "{strategy}");
        assert_eq!(s.class_probabilities(2)[3], 0.0, "{strategy}");
        let drawn = draw_flat(&mut s, 3);
        assert!(drawn.iter().all(|&i| i < labels.len()));
    }
    assert_eq!(
        err(
            &labels,
            3,
            SamplerConfig {
                strategy: Strategy::ClassBalanced {
                    draw: CbDraw::ClassCycle,
                    per_class: 0
                },
                ..base.clone()
            }
        ),
        SamplerError::ZeroPerClass
    );
    for q in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = err(
            &labels,
            3,
            SamplerConfig {
                strategy: Strategy::Power { q },
                ..base.clone()
            },
        );
        assert!(matches!(e, SamplerError::InvalidPower { .. }), "{e}");
    }
    for (total_epochs, lambda, ok) in [
        (1, PbLambda::TOverTMinus1, false),
        (2, PbLambda::TOverTMinus1, true),
        (0, PbLambda::TOverT, false),
        (1, PbLambda::TOverT, true),
    ] {
        let r = Sampler::new(
            &labels,
            3,
            SamplerConfig {
                strategy: Strategy::ProgressivelyBalanced {
                    total_epochs,
                    lambda,
                },
                ..base.clone()
            },
        );
        assert_eq!(r.is_ok(), ok, "T = {total_epochs}, {lambda}");
        if let Err(e) = r {
            assert!(matches!(e, SamplerError::InvalidTotalEpochs { .. }));
        }
    }
    // floor(6 / 8) = 0 batches, or an explicit 0.
    let e = err(
        &labels,
        3,
        SamplerConfig {
            batch_size: 8,
            ..base.clone()
        },
    );
    assert!(matches!(e, SamplerError::EmptyEpoch { .. }), "{e}");
    assert!(e.to_string().contains("6 samples"));
    let e = err(
        &labels,
        3,
        SamplerConfig {
            epoch_length: EpochLength::Batches(0),
            ..base.clone()
        },
    );
    assert!(matches!(e, SamplerError::EmptyEpoch { .. }));
    let e = err(
        &labels,
        3,
        SamplerConfig {
            epoch_length: EpochLength::Batches(usize::MAX),
            ..base.clone()
        },
    );
    assert!(matches!(e, SamplerError::EpochTooLong { .. }));
}

#[test]
fn config_reads_from_toml_with_defaults() {
    let config: SamplerConfig = toml::from_str(
        r#"
        strategy = { kind = "class_balanced" }
        batch_size = 512
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        SamplerConfig {
            strategy: Strategy::class_balanced(),
            batch_size: 512,
            ..SamplerConfig::default()
        }
    );
    let config: SamplerConfig = toml::from_str(
        r#"
        strategy = { kind = "class_balanced", draw = "class_uniform_iid", per_class = 1 }
        epoch_length = { batches = 10 }
        seed = 3
        rank = 1
        world_size = 2
        shuffle_in_batch = true
        "#,
    )
    .unwrap();
    assert_eq!(
        config.strategy,
        Strategy::ClassBalanced {
            draw: CbDraw::ClassUniformIid,
            per_class: 1
        }
    );
    assert_eq!(config.epoch_length, EpochLength::Batches(10));
    assert_eq!(
        (
            config.seed,
            config.rank,
            config.world_size,
            config.shuffle_in_batch
        ),
        (3, 1, 2, true)
    );

    let parse = |s: &str| toml::from_str::<SamplerConfig>(s);
    assert_eq!(
        parse(r#"strategy = { kind = "progressively_balanced", total_epochs = 90 }"#)
            .unwrap()
            .strategy,
        Strategy::progressively_balanced(90)
    );
    assert_eq!(
        parse(r#"strategy = { kind = "progressively_balanced", total_epochs = 90, lambda = "t_over_t" }"#)
            .unwrap()
            .strategy,
        Strategy::ProgressivelyBalanced {
            total_epochs: 90,
            lambda: PbLambda::TOverT
        }
    );
    assert_eq!(
        parse(r#"strategy = { kind = "power", q = 0.25 }"#)
            .unwrap()
            .strategy,
        Strategy::Power { q: 0.25 }
    );
    assert_eq!(
        parse(r#"strategy = { kind = "square_root" }"#)
            .unwrap()
            .strategy,
        Strategy::SquareRoot
    );
    assert_eq!(
        parse(r#"epoch_length = "ceil""#).unwrap().epoch_length,
        EpochLength::Ceil
    );
    assert_eq!(
        parse(r#"epoch_length = "nominal""#).unwrap().epoch_length,
        EpochLength::Nominal
    );

    // Unknown keys and values are errors that name them.
    for (bad, word) in [
        ("batchsize = 3", "batchsize"),
        (
            r#"strategy = { kind = "class_balanced", per_clas = 3 }"#,
            "per_clas",
        ),
        (r#"strategy = { kind = "instance_balanced", q = 1.0 }"#, "q"),
        (r#"strategy = { kind = "balanced" }"#, "balanced"),
        (
            r#"strategy = { kind = "class_balanced", draw = "cycle" }"#,
            "cycle",
        ),
        (r#"epoch_length = "round""#, "round"),
        (r#"strategy = { kind = "power" }"#, "q"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(word), "{bad}: {e}");
    }

    // Every strategy round-trips through TOML and JSON.
    for strategy in all_strategies() {
        let config = SamplerConfig {
            strategy,
            epoch_length: EpochLength::Batches(3),
            ..SamplerConfig::default()
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config, "{text}");
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<SamplerConfig>(&json).unwrap(),
            config
        );
    }
}
