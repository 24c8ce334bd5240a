//! How runs are found in a results directory.

use std::path::{Path, PathBuf};

use lt_run::layout::RESULTS_FILE;

use super::ReportError;

/// Directories never searched for runs: report output and bulky run contents.
const SKIP_DIRS: [&str; 4] = ["report", "checkpoints", "features", "logs"];

/// Every directory under `root` (itself included) holding a
/// [`RESULTS_FILE`], in sorted order. Report output, checkpoint, feature,
/// log and hidden directories are not searched.
pub fn find_runs(root: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReportError::NoRuns(root.to_path_buf()))
        }
        Err(error) => {
            return Err(ReportError::Io {
                path: root.to_path_buf(),
                error,
            })
        }
    };
    if !meta.is_dir() {
        return Err(ReportError::Io {
            path: root.to_path_buf(),
            error: std::io::Error::other("not a directory"),
        });
    }
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join(RESULTS_FILE).is_file() {
            found.push(dir.clone());
        }
        let entries = std::fs::read_dir(&dir).map_err(|error| ReportError::Io {
            path: dir.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| ReportError::Io {
                path: dir.clone(),
                error,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || SKIP_DIRS.contains(&name.as_ref()) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_recursively_and_report_dirs_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a/s1/seed0", "a/s1/seed1", "report/x", "b/checkpoints", "b"] {
            let p = dir.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(RESULTS_FILE), "{}").unwrap();
        }
        let runs = find_runs(dir.path()).unwrap();
        let rel: Vec<_> = runs
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            rel,
            ["a/s1/seed0", "a/s1/seed1", "b"]
                .map(PathBuf::from)
                .to_vec()
        );
        let e = find_runs(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, ReportError::NoRuns(_)), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
