//! Problems found in rule and template files, each pointing at where it was written, printed
//! the way a compiler prints them.

use super::model::Location;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem. `location` is `None` only for problems with a whole folder or file that could
/// not be read (then `file` says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub location: Option<Location>,
    /// The file, when there is no line to point at (unreadable, too big).
    pub file: Option<PathBuf>,
    pub hint: Option<String>,
    /// Other places that explain this one (`first defined here`).
    pub notes: Vec<(Location, String)>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            location: None,
            file: None,
            hint: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, location: Location) -> Diagnostic {
        self.location = Some(location);
        self
    }

    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Diagnostic {
        self.file = Some(file.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn note(mut self, location: Location, text: impl Into<String>) -> Diagnostic {
        self.notes.push((location, text.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// error: rule `confirma`: template `991` has 2 placeholders but the rule gives 3 variables
    ///   --> rules/confirmacion.yaml:14:9
    ///   = hint: …
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: {}", self.message)?;
        if let Some(location) = &self.location {
            write!(f, "\n  --> {location}")?;
        } else if let Some(file) = &self.file {
            write!(f, "\n  --> {}", file.display())?;
        }
        for (location, text) in &self.notes {
            write!(f, "\n  = note: {text}: {location}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// `error: …` and `warning: …` counts as `2 errors, 1 warning`.
pub fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match (errors, warnings) {
        (0, 0) => "no problems".into(),
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` or nothing.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates)
        .map(|c| format!("did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["trigger", "actions", "where", "for_each"];
        assert_eq!(did_you_mean("triger", keys), Some("trigger"));
        assert_eq!(did_you_mean("acciones", keys), Some("actions"));
        assert_eq!(did_you_mean("horario", keys), None);
        assert_eq!(did_you_mean("Actions", keys), Some("actions"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn prints_like_a_compiler() {
        let at = |line| Location {
            file: "rules/a.yaml".into(),
            line,
            column: 9,
        };
        let d = Diagnostic::error("rule `x`: bad")
            .at(at(14))
            .note(at(3), "first defined here")
            .hint("fix it");
        assert_eq!(
            d.to_string(),
            "error: rule `x`: bad\n  --> rules/a.yaml:14:9\n  = note: first defined here: rules/a.yaml:3:9\n  = hint: fix it"
        );
        assert_eq!(
            summary(&[d.clone(), d, Diagnostic::warning("w")]),
            "2 errors, 1 warning"
        );
    }
}
