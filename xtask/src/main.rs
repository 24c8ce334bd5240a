//! Project tasks, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml` for `cargo run --release --package xtask --`).
//!
//! * `fetch-data`: download or take a local archive, verify its sha256,
//!   unpack, index, and write the split lists (see [`fetch_data`]).
//! * `lt-folder`: a long-tailed folder of images (one sub-folder per class)
//!   cut from CIFAR, to try `lt-cli init` on (see [`lt_folder`]).
//! * `sweep`: run a grid of experiments through `lt-cli`, resumably, and
//!   write its tables and plots (see [`sweep`]).

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod fetch_data;
mod lt_folder;
mod sweep;

/// Project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about = "Project tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch a dataset: verify, unpack, index and write its split lists.
    FetchData(fetch_data::FetchDataArgs),
    /// Run a grid of experiments (datasets x samplers x seeds x heads) and
    /// write its tables and plots; rerun to resume.
    Sweep(sweep::SweepArgs),
    /// Write a long-tailed folder of images (one sub-folder per class) cut
    /// from CIFAR, fetching CIFAR first when it is missing.
    LtFolder(lt_folder::LtFolderArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: not in a CI log, a pipe or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match Cli::parse().command {
        Command::FetchData(args) => fetch_data::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::LtFolder(args) => lt_folder::run(args),
    }
}
