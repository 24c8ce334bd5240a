//! Class names: the `classes.txt` file, one name per line, line `i` naming
//! class `i`. The data crate reads it beside a split list; the report shows
//! the names; both parse it here.

/// The file of class names.
pub const CLASS_NAMES_FILE: &str = "classes.txt";

/// Why a class-name file is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ClassNamesError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The names of a [`CLASS_NAMES_FILE`]'s text: one per line (trimmed;
/// blank lines at the end ignored), exactly `num_classes` of them.
///
/// ```
/// use lt_core::classes::parse_class_names;
/// assert_eq!(parse_class_names("cat\n dog \n\n", 2).unwrap(), ["cat", "dog"]);
/// assert_eq!(parse_class_names("cat\n\ndog\n", 3).unwrap_err().line, 2);
/// assert!(parse_class_names("cat\n", 2).is_err());
/// ```
pub fn parse_class_names(text: &str, num_classes: usize) -> Result<Vec<String>, ClassNamesError> {
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return Err(ClassNamesError {
            line: i + 1,
            message: "empty class name".into(),
        });
    }
    if names.len() != num_classes {
        return Err(ClassNamesError {
            line: names.len(),
            message: format!(
                "{} class names for {num_classes} classes (one name per line, line i names \
                 class i)",
                names.len()
            ),
        });
    }
    Ok(names)
}
