//! Hand-computed checks of every metric.

use lt_core::stats::{ClassStats, GroupRule, GroupThresholds, ShotGroup};
use lt_metrics::{
    calibration, evaluate, evaluate_with_loss, predictions, top_k_accuracy, ConfusionMatrix,
    Evaluation, MetricsError, ECE_BINS,
};

fn approx(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

/// Default rule: many > 100, medium 20..=100, few < 20.
fn rule() -> GroupRule {
    GroupRule::TrainCount(GroupThresholds::default())
}

/// 4 classes: class 0 many (500), 1 medium (100), 2 few (19), 3 few (3).
fn stats4() -> ClassStats {
    ClassStats::from_counts(vec![500, 100, 19, 3])
}

/// Six samples of four classes; class 3 is absent from the test labels.
fn case4() -> (Vec<f32>, Vec<u32>) {
    #[rustfmt::skip]
    let logits = vec![
        5.0, 1.0, 0.0, 0.0, // label 0, pred 0
        4.0, 1.0, 0.0, 2.0, // label 0, pred 0
        1.0, 0.0, 3.0, 0.0, // label 1, pred 2 (label ranks 3rd)
        0.0, 2.0, 1.0, 0.0, // label 1, pred 1
        2.0, 2.0, 2.0, 2.0, // label 2, pred 0 by the first-index tie rule
        0.0, 0.0, 1.0, 9.0, // label 2, pred 3
    ];
    (logits, vec![0, 0, 1, 1, 2, 2])
}

#[test]
fn accuracies_and_groups_by_hand() {
    let (logits, labels) = case4();
    let e = evaluate(&logits, 4, &labels, &stats4(), &rule()).unwrap();
    assert_eq!(e.n, 6);
    approx(e.top1, 3.0 / 6.0);
    assert_eq!(e.per_class_support, vec![2, 2, 2, 0]);
    assert_eq!(e.per_class[..3], [1.0, 0.5, 0.0]);
    assert!(e.per_class[3].is_nan());
    approx(e.macro_acc, 1.5 / 3.0);
    assert_eq!(e.group_sizes, [1, 1, 2]);
    assert_eq!(e.many, Some(1.0));
    assert_eq!(e.medium, Some(0.5));
    // Class 3 is few-shot but absent from the test set: only class 2 counts.
    assert_eq!(e.few, Some(0.0));
    assert_eq!(e.group(ShotGroup::Medium), Some(0.5));
    // Top-4 (k clamped from 5 to 4) is always right.
    assert_eq!(e.top5_k, 4);
    assert_eq!(e.top5, 1.0);
}

/// The loss from the shared softmax pass is the mean of
/// `-ln softmax(z)_y`, computed here term by term from the closed forms,
/// and the metrics are [`evaluate`]'s.
#[test]
fn evaluation_with_loss_by_hand() {
    let (logits, labels) = case4();
    let (e, loss) = evaluate_with_loss(&logits, 4, &labels, &stats4(), &rule()).unwrap();
    // Through JSON: class 3 has no test sample, so its accuracy is NaN.
    let json = |e: &Evaluation| serde_json::to_string(e).unwrap();
    let want_e = evaluate(&logits, 4, &labels, &stats4(), &rule()).unwrap();
    assert_eq!(json(&e), json(&want_e));
    let ln = f64::ln;
    let ex = f64::exp;
    let nll = [
        ln(ex(5.0) + ex(1.0) + 2.0) - 5.0,
        ln(ex(4.0) + ex(1.0) + 1.0 + ex(2.0)) - 4.0,
        ln(ex(1.0) + 2.0 + ex(3.0)) - 0.0,
        ln(2.0 + ex(2.0) + ex(1.0)) - 2.0,
        ln(4.0),
        ln(2.0 + ex(1.0) + ex(9.0)) - 1.0,
    ];
    let want = nll.iter().sum::<f64>() / 6.0;
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    // Bad logits fail as `evaluate` fails.
    let mut bad = logits.clone();
    bad[3] = f32::NAN;
    assert!(evaluate_with_loss(&bad, 4, &labels, &stats4(), &rule()).is_err());
}

#[test]
fn top_k_with_ties_and_clamping() {
    let (logits, labels) = case4();
    // Classes ranked ahead of the label, row by row: 0; 0; 2 (logits 1 and 3 beat
    // 0, the equal 0 of class 3 has a larger index); 0; 2 (equal logits with
    // smaller indices); 1 (the 9).
    approx(top_k_accuracy(&logits, 4, &labels, 1).unwrap(), 3.0 / 6.0);
    approx(top_k_accuracy(&logits, 4, &labels, 2).unwrap(), 4.0 / 6.0);
    approx(top_k_accuracy(&logits, 4, &labels, 3).unwrap(), 1.0);
    approx(top_k_accuracy(&logits, 4, &labels, 50).unwrap(), 1.0);
    assert_eq!(
        top_k_accuracy(&logits, 4, &labels, 0),
        Err(MetricsError::ZeroK)
    );
    // C = 2 < 5: top-5 is trivially 1, top-1 is not.
    let l2 = [0.0f32, 1.0, 1.0, 0.0];
    let e = evaluate(
        &l2,
        2,
        &[0, 0],
        &ClassStats::from_counts(vec![1, 1]),
        &rule(),
    )
    .unwrap();
    assert_eq!((e.top1, e.top5, e.top5_k), (0.5, 1.0, 2));
}

#[test]
fn predictions_use_the_first_maximum() {
    assert_eq!(
        predictions(&[1.0, 3.0, 3.0, 2.0, 2.0, 2.0], 3).unwrap(),
        vec![1, 0]
    );
    assert_eq!(predictions(&[1.0, 2.0], 3), Err(MetricsError::Empty));
    assert!(matches!(
        predictions(&[1.0, 2.0, 3.0, 4.0], 3),
        Err(MetricsError::LogitShape { .. })
    ));
}

#[test]
fn confusion_matrix_by_hand() {
    let (logits, labels) = case4();
    let e = evaluate(&logits, 4, &labels, &stats4(), &rule()).unwrap();
    let m = e.confusion();
    assert_eq!(m.num_classes(), 4);
    assert_eq!(m.total(), 6);
    #[rustfmt::skip]
    let expected = vec![
        2, 0, 0, 0,
        0, 1, 1, 0,
        1, 0, 0, 1,
        0, 0, 0, 0,
    ];
    assert_eq!(m.to_dense(), expected);
    assert_eq!(m.get(1, 2), 1);
    assert_eq!(m.get(3, 3), 0);
    assert_eq!(
        m.cells(),
        &[(0, 0, 2), (1, 1, 1), (1, 2, 1), (2, 0, 1), (2, 3, 1)]
    );
    assert_eq!(
        ConfusionMatrix::from_predictions(&[0, 1], &[0], 2),
        Err(MetricsError::LengthMismatch {
            labels: 2,
            predictions: 1
        })
    );
}

#[test]
fn macro_f1_by_hand() {
    let (logits, labels) = case4();
    let e = evaluate(&logits, 4, &labels, &stats4(), &rule()).unwrap();
    // Per class (TP, FP, FN): 0 (2, 1, 0) -> 4/5; 1 (1, 0, 1) -> 2/3;
    // 2 (0, 1, 2) -> 0; 3 (0, 1, 0) -> 0 (predicted, so counted as scikit-learn does).
    approx(e.macro_f1, (0.8 + 2.0 / 3.0) / 4.0);
}

#[test]
fn ece_by_hand() {
    let ln3 = 3f32.ln();
    let ln9 = 9f32.ln();
    #[rustfmt::skip]
    let logits = [
        0.0, 0.0, // conf 0.5  (bin 7: (7/15, 8/15]), pred 0, label 0: right
        ln3, 0.0, // conf 0.75 (bin 11: (11/15, 12/15]), label 0: right
        ln3, 0.0, // conf 0.75, label 1: wrong
        0.0, ln9, // conf 0.9  (bin 13: (13/15, 14/15]), pred 1, label 1: right
    ];
    let labels = [0u32, 0, 1, 1];
    // ECE = 1/4 |1 - 0.5| + 2/4 |0.5 - 0.75| + 1/4 |1 - 0.9| = 0.125 + 0.125 + 0.025.
    let cal = calibration(&logits, 2, &labels, ECE_BINS).unwrap();
    assert!((cal.ece - 0.275).abs() < 1e-6, "{}", cal.ece);
    assert_eq!(cal.bins.len(), 15);
    let counts: Vec<usize> = cal.bins.iter().map(|b| b.count).collect();
    assert_eq!(counts, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0]);
    assert_eq!(cal.bins[11].accuracy, Some(0.5));
    assert!((cal.bins[11].confidence.unwrap() - 0.75).abs() < 1e-6);
    assert_eq!(cal.bins[0].accuracy, None);
    approx(cal.bins[7].lower, 7.0 / 15.0);

    let e = evaluate(
        &logits,
        2,
        &labels,
        &ClassStats::from_counts(vec![5, 5]),
        &rule(),
    )
    .unwrap();
    assert!((e.ece - 0.275).abs() < 1e-6);
    assert_eq!(e.calibration, cal.bins);
}

#[test]
fn ece_bin_edges_are_upper_inclusive() {
    // Two classes: confidence 1/2 exactly on the edge between... with 2 bins the
    // edge 0.5 belongs to the lower bin (0, 0.5]; a confidence of 1 to the top bin.
    let cal = calibration(&[0.0, 0.0, 100.0, -100.0], 2, &[0, 0], 2).unwrap();
    assert_eq!(cal.bins[0].count, 1);
    assert_eq!(cal.bins[1].count, 1);
    assert_eq!(cal.bins[1].confidence, Some(1.0));
    assert_eq!(calibration(&[0.0], 1, &[0], 0), Err(MetricsError::ZeroBins));
}

#[test]
fn a_group_without_classes_is_none() {
    let (logits, labels) = case4();
    // Everything many-shot.
    let stats = ClassStats::from_counts(vec![500; 4]);
    let e = evaluate(&logits, 4, &labels, &stats, &rule()).unwrap();
    assert_eq!(e.group_sizes, [4, 0, 0]);
    assert_eq!((e.medium, e.few), (None, None));
    approx(e.many.unwrap(), e.macro_acc);
}

#[test]
fn index_range_rule() {
    let (logits, labels) = case4();
    let rule = GroupRule::IndexRanges {
        many_end: 2,
        medium_end: 3,
    };
    let e = evaluate(&logits, 4, &labels, &stats4(), &rule).unwrap();
    assert_eq!(e.many, Some(0.75));
    assert_eq!(e.medium, Some(0.0));
    assert_eq!(e.few, None); // class 3 has no test sample
}

#[test]
fn invalid_inputs_are_errors() {
    let (logits, labels) = case4();
    let s = stats4();
    let r = rule();
    assert_eq!(evaluate(&[], 4, &[], &s, &r), Err(MetricsError::Empty));
    assert_eq!(
        evaluate(&[], 0, &[], &s, &r),
        Err(MetricsError::ZeroClasses)
    );
    assert_eq!(
        evaluate(&logits[..20], 4, &labels, &s, &r),
        Err(MetricsError::LogitShape {
            len: 20,
            rows: 6,
            num_classes: 4
        })
    );
    let mut bad_labels = labels.clone();
    bad_labels[4] = 4;
    assert_eq!(
        evaluate(&logits, 4, &bad_labels, &s, &r),
        Err(MetricsError::LabelOutOfRange {
            row: 4,
            label: 4,
            num_classes: 4
        })
    );
    let mut nan = logits.clone();
    nan[9] = f32::NAN;
    let err = evaluate(&nan, 4, &labels, &s, &r).unwrap_err();
    assert!(
        matches!(
            err,
            MetricsError::NonFiniteLogit {
                row: 2,
                class: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut inf = logits.clone();
    inf[0] = f32::INFINITY;
    assert!(matches!(
        evaluate(&inf, 4, &labels, &s, &r),
        Err(MetricsError::NonFiniteLogit {
            row: 0,
            class: 0,
            ..
        })
    ));
    assert_eq!(
        evaluate(
            &logits,
            4,
            &labels,
            &ClassStats::from_counts(vec![1; 3]),
            &r
        ),
        Err(MetricsError::StatsMismatch {
            stats: 3,
            num_classes: 4
        })
    );
    assert!(err.to_string().contains("row 2, class 1"));
}

#[test]
fn json_round_trip_with_missing_classes() {
    let (logits, labels) = case4();
    let stats = ClassStats::from_counts(vec![500; 4]);
    let e = evaluate(&logits, 4, &labels, &stats, &rule()).unwrap();
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains("\"per_class\":[1.0,0.5,0.0,null]"), "{json}");
    assert!(json.contains("\"medium\":null"), "{json}");
    let back: Evaluation = serde_json::from_str(&json).unwrap();
    // serde_json's default float parser may differ in the last bit, hence the
    // tolerance on the real-valued fields.
    assert_eq!(
        (back.n, back.num_classes, back.top5_k, back.group_sizes),
        (e.n, e.num_classes, e.top5_k, e.group_sizes)
    );
    assert_eq!(
        (back.top1, back.top5, back.macro_acc),
        (e.top1, e.top5, e.macro_acc)
    );
    assert_eq!(
        (back.many, back.medium, back.few),
        (e.many, e.medium, e.few)
    );
    assert_eq!(back.group_rule, e.group_rule);
    assert_eq!(back.per_class_support, e.per_class_support);
    assert_eq!(back.per_class[..3], e.per_class[..3]);
    assert!(back.per_class[3].is_nan());
    assert!((back.ece - e.ece).abs() < 1e-15 && (back.macro_f1 - e.macro_f1).abs() < 1e-15);
    assert_eq!(back.calibration.len(), e.calibration.len());
    for (a, b) in back.calibration.iter().zip(&e.calibration) {
        assert_eq!((a.count, a.accuracy), (b.count, b.accuracy));
        assert!((a.upper - b.upper).abs() < 1e-15);
    }
    assert_eq!(back.confusion(), e.confusion());

    // A tampered confusion matrix is rejected on load.
    let tampered = json.replace("[2,3,1]", "[2,7,1]");
    assert_ne!(tampered, json);
    let err = serde_json::from_str::<Evaluation>(&tampered).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn subset_top1_by_hand_and_bad_inputs() {
    use lt_metrics::subset_top1;
    let preds = [0u32, 1, 1, 3, 2];
    let labels = [0u32, 1, 2, 3, 3];
    approx(subset_top1(&preds, &labels, &[0, 1, 2, 3, 4]).unwrap(), 0.6);
    approx(subset_top1(&preds, &labels, &[2, 4]).unwrap(), 0.0);
    // An index may repeat: it counts each time.
    approx(subset_top1(&preds, &labels, &[0, 0, 2]).unwrap(), 2.0 / 3.0);
    assert_eq!(subset_top1(&preds, &labels, &[]), Err(MetricsError::Empty));
    assert_eq!(
        subset_top1(&preds, &labels, &[5]),
        Err(MetricsError::IndexOutOfRange { index: 5, len: 5 })
    );
    assert!(matches!(
        subset_top1(&preds[..4], &labels, &[0]),
        Err(MetricsError::LengthMismatch { .. })
    ));
}
