//! `lt-cli`: the command line of the long-tailed recognition workspace.
//!
//! ```text
//! lt-cli run       --config configs/X.toml [--resume | --overwrite]   (train, cRT, LWS, eval all)
//! lt-cli train     --config configs/X.toml [--resume | --overwrite] [--set key=value ...]
//! lt-cli retrain   --config configs/X.toml --head crt|lws [--resume | --overwrite]
//! lt-cli eval      --config configs/X.toml [--head joint|ncm|tau-norm|crt|lws|all]
//! lt-cli tau-sweep --config configs/X.toml
//! lt-cli features  --config configs/X.toml [--split train|val|test|all] [--head HEAD]
//! lt-cli heads                                                        (every head, from the registry)
//! lt-cli split-stats <list> [--image-root DIR] [--num-classes N]
//! lt-cli report    <results dir>
//! lt-cli predict   (--config X.toml | --run DIR | --model M.safetensors) (--images DIR | --list L)
//!                  [--head HEAD] [--top-k 5] [--format jsonl|csv] [--out FILE]
//! lt-cli export    (--config X.toml | --run DIR) [--head HEAD] --out M.safetensors
//! lt-cli convert   <in.pth> (<out.safetensors> [--arch A] | --config X.toml | --run DIR [--overwrite])
//! lt-cli init      <image folder | split list> [--out DIR] [--val-fraction F] [--test-fraction F]
//! ```
//!
//! `train`, `retrain` and `run` take `--nproc-per-node N` for data-parallel
//! training with N processes on this machine (GPUs `cuda:0..N` when the
//! config's device is CUDA, TCP between CPU processes otherwise). Several
//! machines: set `NNODES`, `NODE_RANK`, `MASTER_ADDR` and `MASTER_PORT` and
//! run the same command on each, or start each rank with `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` set.
//!
//! Only argument parsing and composition live here; everything else is in
//! `lt-train` and the crates below it.

mod convert;
mod export;
mod fetch_missing;
mod init;
mod launch;
mod predict;
mod timing;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lt_core::stats::{ClassStats, GroupRule, GroupThresholds};
use lt_core::{HeadId, Split};
use lt_train::config::ExperimentConfig;
use lt_train::evaluation;
use lt_train::experiment::Experiment;
use lt_train::heads;
use lt_train::{RunOptions, StartMode, TrainReport};

#[derive(Debug, Parser)]
#[command(
    name = "lt-cli",
    version,
    about = "Decoupled long-tailed recognition: train, re-train classifiers, evaluate",
    after_help = ENVIRONMENT_HELP
)]
struct Cli {
    /// Log filter (`error`, `warn`, `info`, `debug`, or a tracing filter);
    /// `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole pipeline: stage 1, every trained head (cRT, LWS), then every
    /// head evaluated.
    Run(TrainArgs),
    /// Stage 1: train the backbone and the joint linear head.
    Train(TrainArgs),
    /// Stage 2: train a head (cRT, LWS, ...) on the frozen backbone.
    Retrain(RetrainArgs),
    /// List every head: its name, whether it trains, what it is.
    Heads,
    /// Evaluate heads on the reported split; writes results.json in the run dir.
    Eval(EvalArgs),
    /// Sweep tau of the tau-normalised head; writes tau_sweep.json.
    TauSweep(ConfigArgs),
    /// Export features, labels and logits as safetensors.
    Features(FeaturesArgs),
    /// Per-class counts, imbalance ratio and group sizes of a split list.
    SplitStats(SplitStatsArgs),
    /// Regenerate the tables, plots and one-page report.html of a results
    /// directory (one run or a sweep) without training.
    Report {
        /// Directory holding run directories with results.json (e.g. runs/sweeps/tiny).
        results_dir: PathBuf,
    },
    /// Top-k classes (names, probabilities) of images with a run's head or an
    /// exported model; accuracy too on a split list.
    Predict(predict::PredictArgs),
    /// Write one safetensors file: the backbone and a head folded into a
    /// plain linear layer `fc`, with its classes and preprocessing.
    Export(export::ExportArgs),
    /// A PyTorch checkpoint (.pth, .pth.tar: torchvision, a training
    /// checkpoint, the classifier-balancing release) to safetensors, or into
    /// a run as its finished stage 1.
    Convert(convert::ConvertArgs),
    /// From a folder of images (one sub-folder per class) or a split list:
    /// stratified train / val / test lists, classes.txt, class statistics
    /// and a histogram, and a ready config for `run`.
    Init(init::InitArgs),
}

/// A trained run: its config, or its directory (`<run>/config.toml`).
#[derive(Debug, Clone, Args)]
struct ModelSource {
    /// Experiment config of the run (TOML).
    #[arg(long, conflicts_with = "run")]
    config: Option<PathBuf>,
    /// Run directory (reads `<run>/config.toml`).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Opens the run of `--config` or `--run` (whose directory stays the one
/// given, wherever it was trained from).
fn open_source(source: &ModelSource, config_file: &str) -> Result<Experiment> {
    let args = match (&source.config, &source.run) {
        (Some(c), _) => ConfigArgs {
            config: c.clone(),
            set: source.set.clone(),
        },
        (None, Some(run)) => {
            let config = run.join("config.toml");
            if !config.is_file() {
                bail!(
                    "--run {}: no config.toml in it (is it a run directory?)",
                    run.display()
                );
            }
            let mut set = vec![format!("run_dir={:?}", run.display().to_string())];
            set.extend(source.set.iter().cloned());
            ConfigArgs { config, set }
        }
        (None, None) => bail!("give --config <run config> or --run <run dir> (or --model)"),
    };
    open(&args, config_file)
}

#[derive(Debug, Clone, Args)]
struct ConfigArgs {
    /// Experiment config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Override a config key, e.g. `--set stage1.epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct StartArgs {
    /// Continue from the last checkpoint of this stage (`run`: every stage
    /// continues from its checkpoint, a stage without one starts from the
    /// beginning, a finished one is skipped).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over, replacing an existing checkpoint of this stage.
    #[arg(long)]
    overwrite: bool,
    /// Stop once this many epochs are complete (continue later with --resume).
    #[arg(long, value_name = "N")]
    stop_after_epoch: Option<usize>,
    /// Data-parallel training with N processes on this machine (one per GPU
    /// on CUDA); the batch size stays global and must be a multiple of the
    /// number of ranks.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// A stage of `run`: `--resume` continues whatever stage was reached.
    #[arg(skip)]
    in_pipeline: bool,
}

impl StartArgs {
    fn options(&self) -> RunOptions {
        let start = if self.resume && self.in_pipeline {
            StartMode::Continue
        } else if self.resume {
            StartMode::Resume
        } else if self.overwrite {
            StartMode::Overwrite
        } else {
            StartMode::Fresh
        };
        RunOptions {
            start,
            stop_after_epoch: self.stop_after_epoch,
        }
    }
}

#[derive(Debug, Args)]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    start: StartArgs,
}

/// A head of the registry (`tau-norm` is accepted for `tau_norm`).
fn head_arg(s: &str) -> Result<HeadId, String> {
    heads::lookup(s).map(|h| h.id()).map_err(|e| e.to_string())
}

/// A head of the registry that trains in a stage of its own.
fn trained_head_arg(s: &str) -> Result<HeadId, String> {
    let h = heads::lookup(s).map_err(|e| e.to_string())?;
    match h.training() {
        Some(_) => Ok(h.id()),
        None => Err(format!(
            "`{s}` is computed by `eval`, not trained; trained heads: {}",
            heads::trained_names().join(", ")
        )),
    }
}

/// A head of the registry, or `all`.
fn eval_head_arg(s: &str) -> Result<Option<HeadId>, String> {
    if s == "all" {
        Ok(None)
    } else {
        head_arg(s).map(Some)
    }
}

#[derive(Debug, Args)]
struct RetrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Which head to train (see `lt-cli heads`; e.g. crt, lws).
    #[arg(long, value_parser = trained_head_arg)]
    head: HeadId,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Args)]
struct EvalArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Head(s) to evaluate (see `lt-cli heads`), or `all`, which skips trained
    /// heads that were not trained.
    #[arg(long, default_value = "all", value_parser = eval_head_arg)]
    head: Vec<Option<HeadId>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
    All,
}

#[derive(Debug, Args)]
struct FeaturesArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Split(s) to export (`all` = every configured split).
    #[arg(long, default_value = "all")]
    split: Vec<SplitArg>,
    /// Head whose logits are exported, with the backbone it is evaluated on
    /// (a trained head's own BN statistics); see `lt-cli heads`.
    #[arg(long, default_value = "joint", value_parser = head_arg)]
    head: HeadId,
    /// Output directory (default: `<run_dir>/features`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SplitStatsArgs {
    /// Split list (`<relative/path> <label>` per line).
    list: PathBuf,
    /// Image root; when given, every listed image must exist.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Number of classes (default: largest label + 1).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Many-shot: more than this many images (train-count rule).
    #[arg(long, default_value_t = 100)]
    many_above: usize,
    /// Few-shot: fewer than this many images (train-count rule).
    #[arg(long, default_value_t = 20)]
    few_below: usize,
    /// Use the index-range rule instead: `MANY_END,MEDIUM_END` (e.g. `36,71`).
    #[arg(long, value_name = "MANY_END,MEDIUM_END")]
    index_ranges: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Appends a line to the command's output (printed once at the end).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Appends text to the command's output.
macro_rules! outp {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}

/// The environment variables `lt-cli` reads, for `--help`.
const ENVIRONMENT_HELP: &str = "Environment:
  RUST_LOG            log filter; overrides --log
  RAYON_NUM_THREADS   threads of the kernels' pool (default: one per core)
  CANDLE_NUM_THREADS  threads of candle's own pool (default here: 1, which leaves the cores to the kernels)
  LT_FETCH_SOURCE     an archive or URL to fetch a missing CIFAR data set from
  LT_HUGE_PAGES=0     leave the heap and large blocks in 4 KiB pages (default: advised as transparent huge pages)";

/// Stack size of the rayon pool's other threads (the main thread is its
/// worker 0 and runs the commands): that of a Linux main thread (8 MiB),
/// not the 2 MiB a spawned thread gets, for any part of a command that
/// one of them steals.
const MAIN_STACK_BYTES: usize = 8 << 20;

/// Large blocks (the kernels' activations) in transparent huge pages: 3-6 %
/// more images per second on a ResNet-32 training step (the README's
/// performance section). `LT_HUGE_PAGES=0` turns the advice off.
#[global_allocator]
static ALLOC: lt_models::ops::HugePageAlloc = lt_models::ops::HugePageAlloc;

fn main() -> ExitCode {
    // Before the first large block: the allocator starts its advice there.
    if std::env::var_os("LT_HUGE_PAGES").is_some_and(|v| v == "0") {
        lt_models::ops::set_huge_pages(false);
    }
    // candle's own elementwise thread pool spins and competes with the
    // project's kernels (measured 546 vs 493 img/s on a ResNet-32 step at 2
    // threads); the kernels parallelise themselves. Set before any candle op
    // runs, and only when the user has not chosen.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    let dist_env = match lt_train::dist::DistEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rank = dist_env.as_ref().map_or(0, |e| e.rank);
    // Ranks other than 0 only report warnings and errors, and draw no bars.
    init_logging(if rank == 0 { &cli.log } else { "warn" });
    if rank != 0 {
        lt_train::progress::set_hidden(true);
    }
    // A CIFAR data set that a `run` or `train` config names and that is
    // missing is fetched first, once, by the process that starts the
    // command (not by each rank).
    if dist_env.is_none() && std::env::var_os(launch::CHILD_ENV).is_none() {
        if let Command::Run(a) | Command::Train(a) = &cli.command {
            if let Err(e) = fetch_missing::ensure(&a.config) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(n) = launch_request(&cli.command) {
        if std::env::var_os(launch::CHILD_ENV).is_none() {
            return match run_launcher(n) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let mut out = String::new();
    // The main thread is worker 0 of the kernels' rayon pool and runs the
    // command, so that their parallel loops start from inside the pool: a
    // training step on a thread outside it put that thread to sleep and
    // woke it once per loop (`lt_models::ops::on_worker`), and one on a
    // spawned worker allocates its activations from another malloc arena,
    // which maps the large ones anew every step. `RAYON_NUM_THREADS` still
    // sizes the pool; its other threads get the main thread's stack size.
    // A pool built already (none is, this early) is kept, and `on_worker`
    // then moves the command onto it.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .stack_size(MAIN_STACK_BYTES)
        .build_global();
    let result = lt_models::ops::on_worker(|| run(cli.command, &mut out));
    if rank != 0 {
        // Rank 0 prints the result; the others would print the same.
        out.clear();
    }
    // The output goes out in one write; a closed pipe (`| head`) is not an error.
    let written = {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
    };
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing output: {e}");
            return ExitCode::FAILURE;
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn open(args: &ConfigArgs, config_file: &str) -> Result<Experiment> {
    let started = std::time::Instant::now();
    let cfg = ExperimentConfig::load(&args.config, &args.set)?;
    let exp = match lt_train::dist::DistEnv::from_env()? {
        Some(env) if env.world_size > 1 => Experiment::open_distributed(cfg, config_file, &env),
        _ => Experiment::open(cfg, config_file),
    }
    .with_context(|| format!("opening experiment {}", args.config.display()))?;
    timing::opened(&exp.run, exp.dist.rank() == 0, started.elapsed());
    Ok(exp)
}

/// Adds this process's command line to the run's `commands.json` (by the
/// main rank, under the run's lock), so the run and its report say how it was
/// trained; within `run` it is the `run` command line. A stage 1 that starts
/// from scratch starts the list over (what trained the old one no longer
/// describes the run); a command the stage will refuse (`--resume` with no
/// checkpoint, a fresh start over one) is not recorded.
fn record_training_command(
    exp: &Experiment,
    stage: &lt_core::Stage,
    mode: StartMode,
) -> Result<()> {
    if !exp.dist.is_main() {
        return Ok(());
    }
    let has_checkpoint = exp.run.last_checkpoint(stage).exists();
    let refused = match mode {
        StartMode::Fresh => has_checkpoint,
        StartMode::Resume => !has_checkpoint,
        StartMode::Overwrite | StartMode::Continue => false,
    };
    if refused {
        return Ok(());
    }
    let from_scratch = match mode {
        StartMode::Overwrite => true,
        StartMode::Fresh | StartMode::Continue => !has_checkpoint,
        StartMode::Resume => false,
    };
    let path = exp.run.commands();
    let record = lt_run::CommandRecord {
        command: lt_run::commands::this_command_line(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    lt_run::Commands::record(
        &path,
        record,
        from_scratch && *stage == lt_core::Stage::Stage1,
    )
    .with_context(|| format!("recording the command in {}", path.display()))
}

/// `--nproc-per-node` of a command that trains.
fn launch_request(command: &Command) -> Option<usize> {
    match command {
        Command::Run(a) | Command::Train(a) => a.start.nproc_per_node,
        Command::Retrain(a) => a.start.nproc_per_node,
        _ => None,
    }
}

/// Re-runs this very command line as one child process per local rank.
fn run_launcher(nproc_per_node: usize) -> Result<()> {
    let plan = launch::Plan::new(nproc_per_node, |k| std::env::var(k).ok())?;
    let program = std::env::current_exe().context("locating the lt-cli executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    launch::launch(&program, &args, &plan)
}

fn run(command: Command, out: &mut String) -> Result<()> {
    match command {
        Command::Run(a) => {
            // With --resume, each stage continues from its checkpoint or,
            // having none yet, starts: a pipeline killed anywhere goes on.
            let start = StartArgs {
                in_pipeline: true,
                ..a.start.clone()
            };
            let mut stages = vec![(
                "stage 1".to_string(),
                Command::Train(TrainArgs {
                    config: a.config.clone(),
                    start: start.clone(),
                }),
            )];
            for h in heads::REGISTRY.iter().filter(|h| h.training().is_some()) {
                stages.push((
                    format!("stage 2 {}", h.id()),
                    Command::Retrain(RetrainArgs {
                        config: a.config.clone(),
                        head: h.id(),
                        start: start.clone(),
                    }),
                ));
            }
            stages.push((
                "evaluation".to_string(),
                Command::Eval(EvalArgs {
                    config: a.config,
                    head: vec![None],
                }),
            ));
            let started = std::time::Instant::now();
            timing::take_loading();
            let mut breakdown = timing::Breakdown::default();
            for (name, stage) in stages {
                let t = std::time::Instant::now();
                run(stage, out)?;
                breakdown.add_command(&name, t.elapsed());
            }
            let timings = breakdown.finish(started.elapsed());
            outp!(out, "{}", timing::table(&timings));
            if let Some(run) = timing::written_run() {
                timings
                    .write(&run.timings())
                    .with_context(|| format!("writing {}", run.timings().display()))?;
                // The run's own report (tables, plots, report.html), as
                // `lt-cli report` writes it. The results are already safe in
                // results.json, so a report that cannot be drawn is a
                // warning, not a failed run.
                match lt_report::regenerate(run.root()) {
                    Ok(r) => {
                        r.warnings.iter().for_each(|w| tracing::warn!("{w}"));
                        outln!(
                            out,
                            "report: {}",
                            r.out_dir.join(lt_report::HTML_FILE).display()
                        );
                    }
                    Err(e) => tracing::warn!("report of {}: {e}", run.root().display()),
                }
            }
        }
        Command::Heads => {
            // Columns as wide as their longest entry (labels hold non-ASCII
            // characters such as τ: width in characters, not bytes).
            let width = |f: fn(&dyn heads::HeadMethod) -> &'static str, title: &str| {
                heads::REGISTRY
                    .iter()
                    .map(|h| f(*h).chars().count())
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            };
            let (wn, wl) = (width(|h| h.name(), "head"), width(|h| h.label(), "label"));
            let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
            outln!(
                out,
                "{}  {}  {:<7}  what",
                pad("head", wn),
                pad("label", wl),
                "stage"
            );
            for h in heads::REGISTRY {
                let kind = if h.training().is_some() {
                    "trained"
                } else {
                    "eval"
                };
                outln!(
                    out,
                    "{}  {}  {:<7}  {}",
                    pad(h.name(), wn),
                    pad(h.label(), wl),
                    kind,
                    h.about()
                );
            }
        }
        Command::Train(a) => {
            let exp = open(&a.config, "config.toml")?;
            record_training_command(&exp, &lt_core::Stage::Stage1, a.start.options().start)?;
            let report = lt_train::stage1::train_stage1(&exp, a.start.options())
                .context("stage-1 training failed")?;
            print_report(out, &report);
        }
        Command::Retrain(a) => {
            let exp = open(&a.config, &format!("config.{}.toml", a.head))?;
            let stage = lt_core::Stage::Head(a.head.clone());
            record_training_command(&exp, &stage, a.start.options().start)?;
            let report = lt_train::stage2::retrain(&exp, &a.head, a.start.options())
                .with_context(|| format!("{} training failed", a.head))?;
            print_report(out, &report);
        }
        Command::Eval(a) => {
            let exp = open(&a.config, "config.eval.toml")?;
            let all = a.head.contains(&None);
            let ids: Vec<HeadId> = if all {
                heads::REGISTRY.iter().map(|h| h.id()).collect()
            } else {
                let mut k: Vec<HeadId> = Vec::new();
                for h in a.head.iter().flatten() {
                    if !k.contains(h) {
                        k.push(h.clone());
                    }
                }
                k
            };
            let results =
                evaluation::evaluate_heads(&exp, &ids, all).context("evaluation failed")?;
            outln!(
                out,
                "{} on {} ({} classes; groups by {}: many {} / medium {} / few {})",
                results.config_name,
                results.split.as_str(),
                exp.num_classes(),
                results.group_rule,
                results.group_sizes[0],
                results.group_sizes[1],
                results.group_sizes[2]
            );
            let s1 = &results.stage1;
            outln!(
                out,
                "stage-1 checkpoint: {} (epoch {}; last epoch {})",
                s1.model_select,
                s1.epoch,
                s1.last_epoch.map_or("?".to_string(), |e| e.to_string())
            );
            outp!(out, "{}", heads_table(&results));
            for h in &results.heads {
                if let Some(t) = &h.tau_sweep {
                    let how = match t.selection {
                        lt_core::TauSelect::SweepOnVal => {
                            format!("chosen on {}", t.select_split.as_str())
                        }
                        lt_core::TauSelect::Fixed => "fixed".to_string(),
                    };
                    outln!(out, "{}: tau = {} ({how})", h.label, t.chosen);
                }
            }
            if let Some(t) = &results.shifted_test {
                outln!(
                    out,
                    "top-1 on shifted test distributions ({} sub-samples of at most {} images \
                     per class, seed {}; `eval.shifted_test`):",
                    t.split.as_str(),
                    t.per_class,
                    t.seed
                );
                outp!(out, "{}", lt_report::shifted_table(t));
            }
            for s in &results.skipped {
                outln!(out, "skipped {s}: not trained");
            }
            outln!(out, "wrote {}", exp.run.results().display());
        }
        Command::TauSweep(a) => {
            let exp = open(&a, "config.eval.toml")?;
            let sweep = evaluation::run_tau_sweep(&exp).context("tau sweep failed")?;
            let report_name = sweep.report_split.as_str();
            outln!(
                out,
                "{:>5} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8}",
                "tau",
                format!("{}", sweep.select_split.as_str()),
                "many",
                "medium",
                "few",
                report_name
            );
            for p in &sweep.curve {
                let pct =
                    |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.2}", 100.0 * x));
                outln!(
                    out,
                    "{:>5.2} | {:>8.2} | {:>8} | {:>8} | {:>8} | {:>8}",
                    p.tau,
                    100.0 * p.select.top1,
                    pct(p.select.many),
                    pct(p.select.medium),
                    pct(p.select.few),
                    pct(p.report.as_ref().map(|r| r.top1)),
                );
            }
            match sweep.selection {
                lt_core::TauSelect::SweepOnVal => outln!(
                    out,
                    "chosen tau = {} (best top-1 on {})",
                    sweep.chosen,
                    sweep.select_split.as_str()
                ),
                lt_core::TauSelect::Fixed => {
                    outln!(out, "tau = {} (fixed by eval.tau)", sweep.chosen)
                }
            }
            outln!(out, "wrote {}", exp.run.tau_sweep().display());
        }
        Command::Features(a) => {
            let exp = open(&a.config, "config.eval.toml")?;
            let mut splits = Vec::new();
            for s in &a.split {
                let add: Vec<Split> = match s {
                    SplitArg::Train => vec![Split::Train],
                    SplitArg::Val => vec![Split::Val],
                    SplitArg::Test => vec![Split::Test],
                    SplitArg::All => {
                        let mut v = vec![Split::Train];
                        if exp.val.is_some() {
                            v.push(Split::Val);
                        }
                        if exp.test.is_some() {
                            v.push(Split::Test);
                        }
                        v
                    }
                };
                for x in add {
                    if !splits.contains(&x) {
                        splits.push(x);
                    }
                }
            }
            let files = evaluation::export_features(&exp, &splits, &a.head, a.out.as_deref())
                .context("feature export failed")?;
            for f in files {
                outln!(out, "wrote {}", f.display());
            }
        }
        Command::SplitStats(a) => split_stats(out, &a)?,
        Command::Predict(a) => predict::predict(&a, out)?,
        Command::Export(a) => export::export(&a, out)?,
        Command::Convert(a) => convert::convert(&a, out)?,
        Command::Init(a) => init::init(&a, out)?,
        Command::Report { results_dir } => {
            let r = lt_report::regenerate(&results_dir)
                .with_context(|| format!("report of {}", results_dir.display()))?;
            r.warnings.iter().for_each(|w| tracing::warn!("{w}"));
            outln!(
                out,
                "{} runs: {} tables, {} plots in {}",
                r.runs,
                r.tables.len(),
                r.plots.len(),
                r.out_dir.display()
            );
            outln!(out, "{}", r.out_dir.join(lt_report::HTML_FILE).display());
        }
    }
    Ok(())
}

/// The Many / Medium / Few / All table of every evaluated head.
fn heads_table(r: &lt_run::Results) -> String {
    let rows: Vec<(&str, &lt_metrics::Evaluation)> = r
        .heads
        .iter()
        .map(|h| (h.label.as_str(), &h.evaluation))
        .collect();
    lt_report::markdown_table(&rows)
}

fn print_report(out: &mut String, r: &TrainReport) {
    let pct = |v: f64| format!("{:.2}", 100.0 * v);
    if let Some(from) = r.resumed_from {
        outln!(out, "{}: resumed after epoch {from}", r.stage);
    }
    outln!(
        out,
        "{}: {} of {} epochs, {} steps",
        r.stage,
        r.epochs,
        r.total_epochs,
        r.global_step
    );
    if let Some(v) = &r.last_val {
        outln!(out, "  last epoch: val top-1 {}", pct(v.top1));
    }
    if let Some(t) = &r.last_test {
        outln!(out, "  last epoch: test top-1 {}", pct(t.top1));
    }
    if let Some(b) = &r.best {
        outln!(
            out,
            "  best val:   top-1 {} at epoch {}",
            pct(b.value),
            b.epoch
        );
    }
    outln!(out, "  last checkpoint: {}", r.last_checkpoint.display());
    if let Some(p) = &r.best_checkpoint {
        outln!(out, "  best checkpoint: {}", p.display());
    }
}

#[derive(Debug, serde::Serialize)]
struct SplitStatsOut {
    list: String,
    total: usize,
    num_classes: usize,
    min_count: usize,
    max_count: usize,
    imbalance_ratio: Option<f64>,
    rule: String,
    many: usize,
    medium: usize,
    few: usize,
    counts: Vec<usize>,
}

fn split_stats(out_text: &mut String, a: &SplitStatsArgs) -> Result<()> {
    let labels: Vec<u32> = match &a.image_root {
        Some(root) => lt_data::split_list::read_split_list(&a.list, root, a.num_classes)
            .map_err(anyhow::Error::new)?
            .labels()
            .to_vec(),
        None => lt_data::split_list::read_split_entries(&a.list)
            .map_err(anyhow::Error::new)?
            .into_iter()
            .map(|(e, _)| e.label)
            .collect(),
    };
    if labels.is_empty() {
        bail!("{}: the list is empty", a.list.display());
    }
    let max_label = labels.iter().copied().max().unwrap_or(0) as usize;
    let num_classes = match a.num_classes {
        Some(c) if c <= max_label => bail!(
            "{}: label {max_label} is not below --num-classes {c}",
            a.list.display()
        ),
        Some(c) => c,
        None => max_label + 1,
    };
    let rule = match &a.index_ranges {
        Some(s) => parse_index_ranges(s)?,
        None => GroupRule::TrainCount(GroupThresholds {
            many_above: a.many_above,
            few_below: a.few_below,
        }),
    };
    let stats = ClassStats::from_labels(&labels, num_classes);
    let sizes = stats.group_sizes(&rule);
    let out = SplitStatsOut {
        list: a.list.display().to_string(),
        total: stats.total(),
        num_classes,
        min_count: stats.counts().iter().copied().min().unwrap_or(0),
        max_count: stats.counts().iter().copied().max().unwrap_or(0),
        imbalance_ratio: stats.imbalance_ratio(),
        rule: rule.to_string(),
        many: sizes[0],
        medium: sizes[1],
        few: sizes[2],
        counts: stats.counts().to_vec(),
    };
    if a.json {
        outln!(out_text, "{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(out_text, "list:            {}", out.list);
    outln!(out_text, "images:          {}", out.total);
    outln!(out_text, "classes:         {}", out.num_classes);
    outln!(
        out_text,
        "max / min count: {} / {}",
        out.max_count,
        out.min_count
    );
    match out.imbalance_ratio {
        Some(r) => outln!(out_text, "imbalance ratio: {r:.2}"),
        None => outln!(
            out_text,
            "imbalance ratio: undefined (a class has no image)"
        ),
    }
    outln!(out_text, "rule:            {}", out.rule);
    outln!(
        out_text,
        "groups:          many {} / medium {} / few {}",
        out.many,
        out.medium,
        out.few
    );
    outln!(out_text, "counts per class:");
    for (i, chunk) in out.counts.chunks(10).enumerate() {
        let row: Vec<String> = chunk.iter().map(|c| format!("{c:>6}")).collect();
        outln!(out_text, "  {:>5}: {}", i * 10, row.join(""));
    }
    Ok(())
}

fn parse_index_ranges(s: &str) -> Result<GroupRule> {
    let (a, b) = s
        .split_once(',')
        .with_context(|| format!("--index-ranges `{s}`: expected MANY_END,MEDIUM_END"))?;
    let many_end: usize = a
        .trim()
        .parse()
        .with_context(|| format!("--index-ranges `{s}`: `{a}` is not a number"))?;
    let medium_end: usize = b
        .trim()
        .parse()
        .with_context(|| format!("--index-ranges `{s}`: `{b}` is not a number"))?;
    if medium_end < many_end {
        bail!("--index-ranges `{s}`: MEDIUM_END must not be below MANY_END");
    }
    Ok(GroupRule::IndexRanges {
        many_end,
        medium_end,
    })
}
