//! Empirical class distribution of every sampling strategy on a split list.
//!
//! ```text
//! cargo run --release -p lt-samplers --example sampler_stats -- <split-list-file> \
//!     [--batch 128] [--epochs 1] [--seed 0] [--per-class]
//! ```
//!
//! The split list has one `relative/path label` per line (blank lines are
//! skipped). For each strategy the program draws `--epochs` epochs and
//! prints, against the strategy's target p_j (averaged over those epochs):
//! the total-variation distance, chi-square per degree of freedom, the share
//! of the largest (head) and smallest (tail) class, and the share of the
//! many (> 100 training samples), medium (20 to 100) and few (< 20) groups.
//! `--per-class` adds one row per class. The progressive strategy is planned
//! over `max(--epochs, 2)` epochs.

use std::error::Error;
use std::fmt::Write as _;
use std::process::ExitCode;

use lt_samplers::{CbDraw, PbLambda, Sampler, SamplerConfig, Strategy};

struct Args {
    split_list: String,
    batch: usize,
    epochs: usize,
    seed: u64,
    per_class: bool,
}

const USAGE: &str =
    "usage: sampler_stats <split-list-file> [--batch 128] [--epochs 1] [--seed 0] [--per-class]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut split_list = None;
    let mut parsed = Args {
        split_list: String::new(),
        batch: 128,
        epochs: 1,
        seed: 0,
        per_class: false,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--batch" => parsed.batch = parse_number("--batch", &value("--batch")?)?,
            "--epochs" => parsed.epochs = parse_number("--epochs", &value("--epochs")?)?,
            "--seed" => parsed.seed = parse_number("--seed", &value("--seed")?)?,
            "--per-class" => parsed.per_class = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}\n{USAGE}"))
            }
            path if split_list.is_none() => split_list = Some(path.to_string()),
            extra => return Err(format!("unexpected argument {extra}\n{USAGE}")),
        }
    }
    parsed.split_list = split_list.ok_or_else(|| USAGE.to_string())?;
    if parsed.epochs == 0 {
        return Err("--epochs must be at least 1".to_string());
    }
    Ok(parsed)
}

fn parse_number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{name}: `{text}` is not a valid number"))
}

/// Reads the labels of a split list, naming the file and line of any error.
fn read_labels(path: &str) -> Result<Vec<u32>, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut labels = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("{path}:{}: {why}: `{line}`", number + 1);
        let (item, label) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<relative/path> <label>`"))?;
        if item.trim().is_empty() {
            return Err(bad("missing the relative path").into());
        }
        let label: u32 = label
            .parse()
            .map_err(|_| bad("the label is not a non-negative integer"))?;
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(format!("{path}: no samples").into());
    }
    Ok(labels)
}

/// Training-count groups, as the reference: many > 100, medium 20..=100, few < 20.
fn group(count: usize) -> usize {
    match count {
        101.. => 0,
        20..=100 => 1,
        _ => 2,
    }
}

struct Row {
    name: String,
    empirical: Vec<f64>,
    target: Vec<f64>,
    chi2_per_df: f64,
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let labels = read_labels(&args.split_list)?;
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut counts = vec![0usize; classes];
    for &l in &labels {
        counts[l as usize] += 1;
    }
    let n = labels.len();
    let head = (0..classes)
        .max_by_key(|&c| (counts[c], usize::MAX - c))
        .unwrap_or(0);
    let tail = (0..classes)
        .filter(|&c| counts[c] > 0)
        .min_by_key(|&c| (counts[c], c))
        .unwrap_or(0);
    let mut group_sizes = [0usize; 3];
    for &c in counts.iter().filter(|&&c| c > 0) {
        group_sizes[group(c)] += 1;
    }
    let empty = counts.iter().filter(|&&c| c == 0).count();
    println!(
        "{}: {n} samples, {classes} classes ({empty} empty); head class {head} has {}, tail class {tail} has {}; many/medium/few classes {}/{}/{}",
        args.split_list, counts[head], counts[tail], group_sizes[0], group_sizes[1], group_sizes[2]
    );

    let total_epochs = args.epochs.max(2);
    let strategies = [
        Strategy::InstanceBalanced,
        Strategy::class_balanced(),
        Strategy::ClassBalanced {
            draw: CbDraw::ClassUniformIid,
            per_class: 1,
        },
        Strategy::SquareRoot,
        Strategy::Power { q: 0.5 },
        Strategy::progressively_balanced(total_epochs),
        Strategy::ProgressivelyBalanced {
            total_epochs,
            lambda: PbLambda::TOverT,
        },
    ];
    let mut rows = Vec::new();
    let mut drawn_per_epoch = 0;
    for strategy in strategies {
        let config = SamplerConfig {
            strategy: strategy.clone(),
            batch_size: args.batch,
            seed: args.seed,
            ..SamplerConfig::default()
        };
        let mut sampler = match Sampler::new(&labels, classes, config) {
            Ok(s) => s,
            Err(e) => {
                println!("{strategy}: skipped: {e}");
                continue;
            }
        };
        drawn_per_epoch = sampler.num_batches() * args.batch;
        let mut hist = vec![0usize; classes];
        let mut target = vec![0.0; classes];
        for epoch in 0..args.epochs {
            for (t, p) in target.iter_mut().zip(sampler.class_probabilities(epoch)) {
                *t += p / args.epochs as f64;
            }
            for i in sampler.next_epoch().into_iter().flatten() {
                hist[labels[i] as usize] += 1;
            }
        }
        let drawn: usize = hist.iter().sum();
        let empirical: Vec<f64> = hist.iter().map(|&h| h as f64 / drawn as f64).collect();
        let mut chi2 = 0.0;
        let mut cells = 0usize;
        for (&h, &p) in hist.iter().zip(&target) {
            if p > 0.0 {
                let e = p * drawn as f64;
                chi2 += (h as f64 - e).powi(2) / e;
                cells += 1;
            }
        }
        rows.push(Row {
            name: strategy.to_string(),
            empirical,
            target,
            chi2_per_df: chi2 / cells.saturating_sub(1).max(1) as f64,
        });
    }
    println!(
        "batch {}, {} epoch(s), seed {}: {drawn_per_epoch} indices per epoch\n",
        args.batch, args.epochs, args.seed
    );

    let share = |p: &[f64], g: usize| -> f64 {
        p.iter()
            .zip(&counts)
            .filter(|(_, &c)| c > 0 && group(c) == g)
            .fold(0.0, |acc, (x, _)| acc + x)
    };
    // A group without classes prints as "-" rather than 0/0.
    let group_pair = |row: &Row, g: usize| {
        if group_sizes[g] == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.4}/{:.4}",
                share(&row.empirical, g),
                share(&row.target, g)
            )
        }
    };
    println!(
        "{:<52} {:>7} {:>8}  {:>15}  {:>15}  {:>15}  {:>15}  {:>15}",
        "strategy (drawn / target)", "TV", "chi2/df", "head", "tail", "many", "medium", "few"
    );
    for row in &rows {
        let tv: f64 = 0.5
            * row
                .empirical
                .iter()
                .zip(&row.target)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>();
        let pair = |a: f64, b: f64| format!("{:.4}/{:.4}", a, b);
        println!(
            "{:<52} {:>7.4} {:>8.2}  {:>15}  {:>15}  {:>15}  {:>15}  {:>15}",
            row.name,
            tv,
            row.chi2_per_df,
            pair(row.empirical[head], row.target[head]),
            pair(row.empirical[tail], row.target[tail]),
            group_pair(row, 0),
            group_pair(row, 1),
            group_pair(row, 2),
        );
    }

    if args.per_class {
        println!();
        for (k, row) in rows.iter().enumerate() {
            println!("[{k}] = {}", row.name);
        }
        let mut header = format!("{:>6} {:>7}", "class", "n_j");
        for (k, _) in rows.iter().enumerate() {
            write!(header, "  {:>15}", format!("[{k}] drawn/target"))?;
        }
        println!("{header}");
        for (c, &count) in counts.iter().enumerate() {
            let mut line = format!("{c:>6} {count:>7}");
            for row in &rows {
                write!(
                    line,
                    "  {:>15}",
                    format!("{:.4}/{:.4}", row.empirical[c], row.target[c])
                )?;
            }
            println!("{line}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
