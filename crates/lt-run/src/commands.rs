//! `commands.json`: the command lines that trained the run (`lt-cli run`,
//! `train`, `retrain`), so a reader of the run (or of its report) can see how
//! it was produced, not only how its report was drawn.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RunError;

/// One command that trained the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The command line (program by its file name, arguments shell-quoted).
    pub command: String,
    /// The version of the tools that ran it.
    pub version: String,
}

/// Every distinct command that trained the run, in the order of their first
/// use (`commands.json`). A command run again (a `run` pipeline trains each
/// stage with the same command line; `--resume` repeats one) is kept once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    /// The commands, oldest first.
    pub commands: Vec<CommandRecord>,
}

impl Commands {
    /// Reads a `commands.json`.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        crate::read_json(path, "commands.json")
    }

    /// Writes a `commands.json` atomically.
    pub fn write(&self, path: &Path) -> Result<(), RunError> {
        crate::write_json(path, "commands.json", self)
    }

    /// Adds `record` to the `commands.json` at `path` (created when missing)
    /// unless it is already there; with `start_over`, it replaces what the
    /// file held (the run is being trained from scratch). Call it only while
    /// holding the run directory's lock.
    pub fn record(path: &Path, record: CommandRecord, start_over: bool) -> Result<(), RunError> {
        let mut all = if path.exists() && !start_over {
            Self::read(path)?
        } else {
            Self::default()
        };
        if all.commands.contains(&record) {
            return Ok(());
        }
        all.commands.push(record);
        all.write(path)
    }
}

/// The command line of this process: the program by its file name, then its
/// arguments, each as a POSIX shell reads it back.
pub fn this_command_line() -> String {
    let mut args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let program = args
        .next()
        .map(|p| {
            Path::new(&p)
                .file_name()
                .map_or(p.clone(), |f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    std::iter::once(program)
        .chain(args)
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A word as a POSIX shell reads it back: plain words as they are, others
/// in single quotes.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./=:,+@%-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(command: &str) -> CommandRecord {
        CommandRecord {
            command: command.into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn record_creates_the_file_keeps_each_command_once_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commands.json");
        Commands::record(&path, rec("lt-cli run a.toml"), false).unwrap();
        Commands::record(&path, rec("lt-cli run a.toml --resume"), false).unwrap();
        Commands::record(&path, rec("lt-cli run a.toml"), false).unwrap();
        let got = Commands::read(&path).unwrap();
        assert_eq!(
            got.commands,
            vec![rec("lt-cli run a.toml"), rec("lt-cli run a.toml --resume")]
        );
        // Trained again from scratch: only the new command describes it.
        Commands::record(&path, rec("lt-cli run a.toml --overwrite"), true).unwrap();
        let got = Commands::read(&path).unwrap();
        assert_eq!(got.commands, vec![rec("lt-cli run a.toml --overwrite")]);
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("runs/a_b-1.toml"), "runs/a_b-1.toml");
        assert_eq!(shell_quote("my sweep"), "'my sweep'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
