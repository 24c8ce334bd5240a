//! Paper-style tables and seed statistics.

use crate::Evaluation;
use std::fmt::Write;

/// Renders `method | Many | Medium | Few | All` rows in percent with one
/// decimal, as the paper's tables. `All` is the micro top-1 accuracy; a group
/// without classes prints `–`. A `|` in a method name is escaped.
///
/// ```
/// # use lt_metrics::markdown_table;
/// let table = markdown_table(&[]);
/// assert_eq!(table, "| Method | Many | Medium | Few | All |\n|---|---:|---:|---:|---:|\n");
/// ```
pub fn markdown_table(rows: &[(&str, &Evaluation)]) -> String {
    let mut out =
        String::from("| Method | Many | Medium | Few | All |\n|---|---:|---:|---:|---:|\n");
    for (name, e) in rows {
        let cells = [e.many, e.medium, e.few, Some(e.top1)].map(percent);
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            name.replace('|', "\\|"),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
    }
    out
}

fn percent(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}", 100.0 * v),
        _ => "–".to_string(),
    }
}

/// Mean and sample standard deviation (divisor n - 1) of `values`, for results
/// over seeds. One value has standard deviation 0; no value gives `(NaN, NaN)`.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}
