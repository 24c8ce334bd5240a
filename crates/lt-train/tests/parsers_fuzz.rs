//! A property test of every parser that reads user or run files: the
//! experiment config, split lists, `results.json` and `metrics.jsonl`.
//! Valid inputs are mutated at random (seeded: the same run draws the same
//! inputs) and each parser must return `Ok` or an error, never panic. The
//! inputs that once panicked are kept in `tests/fuzz_regressions/` and
//! replayed on every run.
//!
//! `LT_FUZZ_ITERS` sets the number of mutated inputs per parser (default
//! 2000, about two seconds); the ignored test runs 20 000 per parser.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bytes that matter to the formats: delimiters, quotes, escapes, digits,
/// signs, whitespace, a BOM, NUL, a multi-byte character, invalid UTF-8.
const ALPHABET: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b",",
    b".",
    b":",
    b"\\",
    b"#",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"0",
    b"1",
    b"-1",
    b"1e309",
    b"nan",
    b"inf",
    b"-",
    b"+",
    b"\xef\xbb\xbf",
    b"\0",
    "τ".as_bytes(),
    b"\xff",
    b"\xc3",
    b"true",
    b"null",
    b"..",
    b"/",
];

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..7) {
            // Delete a range.
            0 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                v.drain(a..b);
            }
            // Insert a token.
            1 => {
                let at = rng.random_range(0..=len);
                let tok = ALPHABET[rng.random_range(0..ALPHABET.len())];
                v.splice(at..at, tok.iter().copied());
            }
            // Replace a byte with a random one.
            2 if len > 0 => {
                let at = rng.random_range(0..len);
                v[at] = rng.random();
            }
            // Truncate.
            3 if len > 0 => v.truncate(rng.random_range(0..len)),
            // Duplicate a line.
            4 => {
                let lines: Vec<&[u8]> = v.split(|&b| b == b'\n').collect();
                let i = rng.random_range(0..lines.len());
                let mut out = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                    if j == i {
                        out.extend_from_slice(l);
                        out.push(b'\n');
                    }
                }
                v = out;
            }
            // Swap two lines.
            5 => {
                let mut lines: Vec<Vec<u8>> =
                    v.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let (i, j) = (
                    rng.random_range(0..lines.len()),
                    rng.random_range(0..lines.len()),
                );
                lines.swap(i, j);
                v = lines.join(&b'\n');
            }
            // Replace a run of digits with an extreme number.
            _ => {
                if let Some(at) = v.iter().position(|b| b.is_ascii_digit()) {
                    let end = v[at..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(v.len(), |e| at + e);
                    let extreme: &[&[u8]] =
                        &[b"0", b"-5", b"99999999999999999999", b"1e400", b"-0"];
                    v.splice(
                        at..end,
                        extreme[rng.random_range(0..extreme.len())].iter().copied(),
                    );
                }
            }
        }
    }
    v
}

/// A parser under test: takes the bytes, writes them to a file in `dir` if
/// it reads files, and must not panic.
type Parser = fn(&[u8], &Path);

fn parse_config(bytes: &[u8], _: &Path) {
    let text = String::from_utf8_lossy(bytes);
    let _ = lt_train::config::ExperimentConfig::from_toml_str(&text, "fuzz.toml");
}

fn parse_split_list(bytes: &[u8], _: &Path) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(entries) = lt_data::split_list::parse_split_list(&text, Path::new("fuzz.txt")) {
        let _ = lt_data::split_list::check_no_duplicates(&entries, Path::new("fuzz.txt"));
    }
}

fn parse_results(bytes: &[u8], dir: &Path) {
    let p = dir.join("results.json");
    std::fs::write(&p, bytes).unwrap();
    let _ = lt_run::Results::read(&p);
}

fn parse_metrics(bytes: &[u8], dir: &Path) {
    let p = dir.join("metrics.jsonl");
    std::fs::write(&p, bytes).unwrap();
    let _ = lt_run::metrics_log::read_records(&p);
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = manifest().join("../..");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    match target {
        "config" => vec![
            read("configs/ci_tiny.toml"),
            read("configs/cifar100_lt_r100_short.toml"),
            read("grids/base/tiny_cifar10_lt.toml"),
        ],
        "split_list" => vec![
            b"train/0/a.png 0\ntrain/0/b.png 0\ntrain/1/c.png 1\n# comment\n\nval/2/d.png 2\n".to_vec(),
        ],
        "results" => vec![read("crates/lt-run/tests/fixtures/results_v1.json")],
        "metrics" => vec![br#"{"stage":"stage1","epoch":1,"global_step":10,"lr":0.1,"train_loss":2.3,"train_top1":0.1,"images_per_sec":100.0,"val":null,"test":null,"is_best":false}
{"stage":"crt","epoch":1,"global_step":12,"lr":0.2,"train_loss":1.5,"train_top1":0.3,"images_per_sec":90.0,"val":null,"test":null,"is_best":true}
"#
        .to_vec()],
        _ => unreachable!(),
    }
}

const TARGETS: [(&str, Parser); 4] = [
    ("config", parse_config),
    ("split_list", parse_split_list),
    ("results", parse_results),
    ("metrics", parse_metrics),
];

/// Runs `parse` on `input`; a panic saves the input and fails the test with
/// its path.
fn check(target: &str, parse: Parser, input: &[u8], dir: &Path, what: &str) {
    if catch_unwind(AssertUnwindSafe(|| parse(input, dir))).is_ok() {
        return;
    }
    let crashes = manifest().join("../../target/fuzz-crashes");
    std::fs::create_dir_all(&crashes).unwrap();
    let name = format!("{target}-{}", &lt_core::fs::sha256_hex(input)[..12]);
    let path = crashes.join(&name);
    std::fs::write(&path, input).unwrap();
    panic!(
        "the {target} parser panicked on {what}; the input is saved at {} \
         (copy it to tests/fuzz_regressions/{target}/ once fixed)",
        path.display()
    );
}

fn fuzz(iterations: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Quiet the default panic message: a panic is reported by `check`.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (t, (target, parse)) in TARGETS.iter().enumerate() {
        let seeds = seeds(target);
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0000 + t as u64);
        for i in 0..iterations {
            let seed = &seeds[i % seeds.len()];
            let input = mutate(&mut rng, seed);
            check(
                target,
                *parse,
                &input,
                dir.path(),
                &format!("mutated input {i}"),
            );
        }
    }
    std::panic::set_hook(hook);
}

#[test]
fn kept_regressions_parse_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut replayed = 0;
    for (target, parse) in TARGETS {
        let cases = manifest().join("tests/fuzz_regressions").join(target);
        for entry in std::fs::read_dir(&cases).unwrap() {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            check(
                target,
                parse,
                &input,
                dir.path(),
                &path.display().to_string(),
            );
            replayed += 1;
        }
    }
    assert!(replayed >= 4, "regression cases missing ({replayed})");
}

#[test]
fn mutated_inputs_never_panic_a_parser() {
    let n = std::env::var("LT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    fuzz(n);
}

#[test]
#[ignore = "long: 20 000 mutated inputs per parser"]
fn mutated_inputs_never_panic_a_parser_long() {
    fuzz(20_000);
}

/// The harness itself: a parser that panics is caught and reported with the
/// saved input.
#[test]
#[should_panic(expected = "the config parser panicked on self-test")]
fn a_panicking_parser_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    check(
        "config",
        |_, _| panic!("boom"),
        b"x",
        dir.path(),
        "self-test",
    );
}
