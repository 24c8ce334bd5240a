//! `cargo xtask sweep <grid.toml>`: run a grid of experiments
//! (datasets x stage-1 samplers x seeds, every cell evaluated with the grid's
//! heads) through `lt-cli`, then write the report of the whole sweep.
//!
//! Each cell `(dataset, sampler, seed)` is one run directory,
//! `<out_dir>/<dataset>/<sampler>/seed<k>/`, holding:
//!
//! * `config.toml`: the base config merged with the grid's overrides, the
//!   sampler as `stage1.sampler`, `seed`, `run_dir` and `name`;
//! * `cell.json`: the cell's place in the grid, read by the report;
//! * what `lt-cli` writes there: checkpoints, `metrics.jsonl`,
//!   `results.json`;
//! * `logs/<step>.log`: the output of every `lt-cli` command;
//! * `.sweep/`: the digest of the config and one marker per finished step.
//!
//! The steps of a cell are `lt-cli train`, `lt-cli retrain --head crt` and
//! `--head lws` (when the grid asks for those heads) and `lt-cli eval` with the
//! grid's heads. Stage 1 is trained once per cell and shared by every head.
//! A step with a marker is skipped; a training step whose checkpoint exists
//! without a marker (the sweep was killed) continues with `--resume`, which
//! reproduces an uninterrupted run; a cell whose `results.json` holds every
//! requested head is finished. So a killed sweep is resumed by running the
//! same command again. Changing a cell's config after it started is refused
//! (delete the cell directory to redo it).
//!
//! Finally `lt_report::regenerate` writes tables, plots and the one-page
//! `report.html` into `<out_dir>/report/`. The grid format is documented in `grids/README.md`.
//!
//! Grid parsing, cell configs and step planning are `lt_train::sweep`'s;
//! this file runs the steps (processes, logs, the lock) and the report.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use lt_report::{CELL_FILE, RESULTS_FILE};
use lt_train::sweep::{cell_state, Cell, CellState, Grid, Step};

/// Arguments of `sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Grid file (format: grids/README.md).
    pub grid: PathBuf,
    /// The lt-cli binary to run. Default: build it (`cargo build --release
    /// -p lt-cli`) into the target directory of this xtask and use that.
    #[arg(long, value_name = "PATH")]
    pub lt_cli: Option<PathBuf>,
    /// Cargo features for building lt-cli (e.g. `cuda`).
    #[arg(long, value_name = "FEATURES")]
    pub features: Option<String>,
    /// Override a config key in every cell, after the grid's own overrides
    /// (e.g. `--set device=cuda:0`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the cells, their state and the commands; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only write the report of the cells finished so far.
    #[arg(long, conflicts_with = "no_report")]
    pub report_only: bool,
    /// Do not write the report after the cells.
    #[arg(long)]
    pub no_report: bool,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(lt_core::fs::write_atomic(path, bytes)?)
}

/// The digest that identifies a cell's config: of its body, without the
/// header comment, which names the grid file (moving or copying a grid must
/// not orphan the cells it started).
fn config_digest(text: &str) -> String {
    let body = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with('#') => rest,
        _ => text,
    };
    lt_core::fs::sha256_hex(body.as_bytes())
}

/// Refuses a cell whose config differs from the one it started with: its
/// checkpoints and results belong to the old one. A digest written by an
/// earlier build (of the whole text, header included) is accepted when it
/// matches and rewritten in the current form.
fn check_unchanged(grid: &Grid, cell: &Cell, text: &str) -> anyhow::Result<()> {
    if let Ok(old) = std::fs::read_to_string(cell.digest_path()) {
        let old = old.trim();
        if old == lt_core::fs::sha256_hex(text.as_bytes()) {
            write_atomic(
                &cell.digest_path(),
                format!("{}\n", config_digest(text)).as_bytes(),
            )?;
        } else if old != config_digest(text) {
            bail!(
                "cell {}: its config changed since it started (grid {}); delete {} to redo \
                 the cell, or restore the grid",
                cell.name(),
                grid.path.display(),
                cell.dir.display()
            );
        }
    }
    Ok(())
}

/// Writes a cell's `config.toml`, `cell.json` and config digest.
fn prepare(grid: &Grid, cell: &Cell) -> anyhow::Result<PathBuf> {
    let text = grid.config_text(cell)?;
    check_unchanged(grid, cell, &text)?;
    std::fs::create_dir_all(cell.dir.join(".sweep"))
        .with_context(|| format!("creating {}", cell.dir.display()))?;
    write_atomic(&cell.config_path(), text.as_bytes())?;
    write_atomic(
        &cell.dir.join(CELL_FILE),
        &serde_json::to_vec_pretty(&cell.info)?,
    )?;
    write_atomic(
        &cell.digest_path(),
        format!("{}\n", config_digest(&text)).as_bytes(),
    )?;
    Ok(cell.config_path())
}

/// Runs one `lt-cli` command with its output appended to
/// `<cell>/logs/<step>.log`; a failure quotes the end of the log.
fn run_step(
    cli: &Path,
    cell: &Cell,
    step: &Step,
    args: &[OsString],
    lock: &SweepLock,
) -> anyhow::Result<()> {
    let log_path = cell.dir.join("logs").join(format!("{}.log", step.name()));
    std::fs::create_dir_all(log_path.parent().expect("has a parent"))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command_line = format!("{} {}", cli.display(), shown.join(" "));
    writeln!(log, "$ {command_line}")?;
    let mut child = Command::new(cli)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", cli.display()))?;
    lock.record_child(Some(child.id()))?;
    let status = child.wait();
    lock.record_child(None)?;
    let status = status.with_context(|| format!("waiting for {}", cli.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        bail!(
            "cell {}: `{command_line}` failed ({status}); full log: {}\n{tail}",
            cell.name(),
            log_path.display()
        );
    }
    Ok(())
}

/// Keeps two sweeps (or a new sweep and the `lt-cli` of a killed one) from
/// working in the same output directory at once: `<out_dir>/.sweep.lock`
/// holds the sweep's process id and that of its running `lt-cli`; it is
/// removed when the sweep ends.
#[derive(Debug)]
struct SweepLock {
    path: PathBuf,
}

/// Whether a process is alive, where `/proc` tells; elsewhere assumed alive
/// (the lock then has to be removed by hand after a crash).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

impl SweepLock {
    fn acquire(out_dir: &Path) -> anyhow::Result<SweepLock> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let path = out_dir.join(".sweep.lock");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let alive: Vec<u32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| process_alive(p))
                .collect();
            if !alive.is_empty() {
                bail!(
                    "{}: a sweep or its lt-cli (pid {alive:?}) is still working in {}; wait for \
                     it or stop it (delete the lock if no such process is running)",
                    path.display(),
                    out_dir.display()
                );
            }
        }
        let lock = SweepLock { path };
        lock.record_child(None)?;
        Ok(lock)
    }

    fn record_child(&self, child: Option<u32>) -> anyhow::Result<()> {
        let mut text = std::process::id().to_string();
        if let Some(c) = child {
            text.push_str(&format!(" {c}"));
        }
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

impl Drop for SweepLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lt-cli binary: `--lt-cli`, or built next to this xtask.
fn locate_lt_cli(args: &SweepArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.lt_cli {
        if !p.is_file() {
            bail!("--lt-cli {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    // `cargo xtask` runs <target>/release/xtask; build lt-cli into the same
    // target directory so the two come from the same sources.
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("the xtask binary is not inside a target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "-p", "lt-cli"])
        .env("CARGO_TARGET_DIR", target);
    if let Some(f) = &args.features {
        cmd.args(["--features", f]);
    }
    tracing::info!(target = %target.display(), "building lt-cli (cargo build --release -p lt-cli)");
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo build --release -p lt-cli` failed ({status})");
    }
    let cli = target
        .join("release")
        .join(format!("lt-cli{}", std::env::consts::EXE_SUFFIX));
    if !cli.is_file() {
        bail!("built lt-cli but {} does not exist", cli.display());
    }
    Ok(cli)
}

/// Runs `sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let grid = Grid::load(&args.grid, &args.set)?;
    let cells = grid.cells();
    if args.report_only {
        return write_report(&grid.out_dir);
    }
    // Every cell's config is checked before anything is created or run: a
    // bad value (a negative lr in a row's `set`) fails the sweep up front
    // instead of leaving cell directories behind.
    for cell in &cells {
        let text = grid.config_text(cell)?;
        check_unchanged(&grid, cell, &text)?;
        let origin = format!("{} cell {}", grid.path.display(), cell.name());
        lt_train::config::ExperimentConfig::from_toml_str(&text, &origin)?;
    }
    let states: Vec<CellState> = cells.iter().map(|c| cell_state(c, &grid.heads)).collect();
    let total: usize = states
        .iter()
        .map(|s| match s {
            CellState::Finished => 0,
            CellState::Pending(p) => p.len(),
        })
        .sum();
    let finished = states.iter().filter(|s| **s == CellState::Finished).count();
    tracing::info!(
        grid = %grid.name,
        cells = cells.len(),
        finished,
        steps = total,
        out = %grid.out_dir.display(),
        "sweep"
    );
    if args.dry_run {
        print!("{}", dry_run_text(&grid, &cells, &states));
        return Ok(());
    }
    if total > 0 {
        let lock = SweepLock::acquire(&grid.out_dir)?;
        let cli = locate_lt_cli(&args)?;
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} steps (eta {eta}) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        for (cell, state) in cells.iter().zip(&states) {
            let CellState::Pending(steps) = state else {
                continue;
            };
            let config = prepare(&grid, cell)?;
            for (step, resume) in steps {
                let resume = *resume;
                bar.set_message(format!("{} {}", cell.name(), step.name()));
                let start = Instant::now();
                bar.suspend(|| {
                    tracing::info!(
                        cell = %cell.name(),
                        step = %step.name(),
                        resume,
                        "starting"
                    )
                });
                run_step(
                    &cli,
                    cell,
                    step,
                    &step.args(&config, &grid.heads, resume),
                    &lock,
                )?;
                if *step != Step::Eval {
                    write_atomic(&cell.marker(step), b"done\n")?;
                }
                bar.suspend(|| {
                    tracing::info!(
                        cell = %cell.name(),
                        step = %step.name(),
                        seconds = format!("{:.1}", start.elapsed().as_secs_f64()),
                        "finished"
                    )
                });
                bar.inc(1);
            }
            if cell_state(cell, &grid.heads) != CellState::Finished {
                bail!(
                    "cell {}: `lt-cli eval` succeeded but {} lacks some of the heads {:?}",
                    cell.name(),
                    cell.dir.join(RESULTS_FILE).display(),
                    grid.heads
                );
            }
        }
        bar.finish_and_clear();
    }
    if args.no_report {
        return Ok(());
    }
    write_report(&grid.out_dir)
}

fn write_report(out_dir: &Path) -> anyhow::Result<()> {
    let r = lt_report::regenerate(out_dir)
        .with_context(|| format!("report of {}", out_dir.display()))?;
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
    println!(
        "report of {} runs: {} tables and {} plots in {}",
        r.runs,
        r.tables.len(),
        r.plots.len(),
        r.out_dir.display()
    );
    println!("{}", r.out_dir.join("summary.md").display());
    println!("{}", r.out_dir.join(lt_report::HTML_FILE).display());
    Ok(())
}

/// The `--dry-run` listing: every cell with its state and pending commands.
fn dry_run_text(grid: &Grid, cells: &[Cell], states: &[CellState]) -> String {
    let mut s = format!(
        "grid `{}`: {} cells ({} datasets x {} samplers x {} seeds), heads {}\n",
        grid.name,
        cells.len(),
        grid.datasets.len(),
        grid.samplers.len(),
        grid.seeds.len(),
        grid.heads.join(", ")
    );
    for (cell, state) in cells.iter().zip(states) {
        match state {
            CellState::Finished => s.push_str(&format!("{}: finished\n", cell.dir.display())),
            CellState::Pending(steps) => {
                s.push_str(&format!("{}:\n", cell.dir.display()));
                for (step, resume) in steps {
                    let args: Vec<String> = step
                        .args(&cell.config_path(), &grid.heads, *resume)
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect();
                    s.push_str(&format!("  lt-cli {}\n", args.join(" ")));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lt_run::CellInfo;

    const BASE: &str = r#"
run_dir = "runs/base"
[data]
root = "data/cifar10"
train_list = "train.txt"
[model]
arch = "resnet8"
[stage1]
epochs = 30
batch_size = 128
lr = 0.1
"#;

    const GRID: &str = r#"
name = "g"
base_config = "base.toml"
out_dir = "runs/sweeps/g"
seeds = [0, 1]
heads = ["lws", "joint", "crt"]
[overrides]
"stage2.crt.epochs" = 3
[samplers]
ib = { kind = "instance_balanced", label = "IB" }
cb = { kind = "class_balanced" }
pb = { kind = "progressively_balanced" }
[datasets.c10_r100]
data.train_list = "data/cifar10/cifar10_lt_r100_train.txt"
[datasets.c10_r10]
data = { train_list = "data/cifar10/cifar10_lt_r10_train.txt" }
stage1.epochs = 10
"#;

    #[test]
    fn a_changed_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
        let out = dir.path().join("out");
        let text = GRID.replace("runs/sweeps/g", &out.display().to_string());
        let path = dir.path().join("grid.toml");
        let g = Grid::parse(&text, &path, &[]).unwrap();
        let cell = &g.cells()[0];
        let config = prepare(&g, cell).unwrap();
        assert!(config.is_file());
        let info: CellInfo =
            serde_json::from_slice(&std::fs::read(cell.dir.join(CELL_FILE)).unwrap()).unwrap();
        assert_eq!(info, cell.info);
        prepare(&g, cell).unwrap();
        let g2 = Grid::parse(&text, &path, &["stage1.lr=0.3".into()]).unwrap();
        let e = prepare(&g2, cell).unwrap_err().to_string();
        assert!(
            e.contains("changed") && e.contains("c10_r100/ib/seed0"),
            "{e}"
        );
        // A digest of the whole text, as earlier builds wrote it, is accepted
        // and rewritten without the header.
        let full = g.config_text(cell).unwrap();
        std::fs::write(cell.digest_path(), lt_core::fs::sha256_hex(full.as_bytes())).unwrap();
        prepare(&g, cell).unwrap();
        let digest = std::fs::read_to_string(cell.digest_path()).unwrap();
        assert_eq!(digest.trim(), config_digest(&full));
        // The same grid copied elsewhere (its header names another file)
        // keeps the cells it started.
        let g3 = Grid::parse(&text, &dir.path().join("copy.toml"), &[]).unwrap();
        prepare(&g3, &g3.cells()[0]).unwrap();
    }

    #[test]
    fn the_lock_keeps_out_a_second_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SweepLock::acquire(dir.path()).unwrap();
        let e = SweepLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("still working"), "{e}");
        drop(lock);
        assert!(!dir.path().join(".sweep.lock").exists());
        let _again = SweepLock::acquire(dir.path()).unwrap();
        if Path::new("/proc/self").exists() {
            // A lock left by processes that are gone is taken over.
            std::fs::write(dir.path().join(".sweep.lock"), "4294967290 4294967291\n").unwrap();
            SweepLock::acquire(dir.path()).unwrap();
        }
    }
}
