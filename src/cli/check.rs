//! `recuerda check`: load the rules and templates the engine would, and report every problem
//! like a compiler, then the reply routing table. Exits 0 only without errors.

use crate::config::Config;
use crate::rules::diagnostic::summary;
use crate::rules::{Diagnostic, RuleSet, Trigger};
use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

pub async fn run(_args: CheckArgs, config: Config) -> anyhow::Result<()> {
    let (report, errors) = report(&config);
    print!("{report}");
    if errors > 0 {
        anyhow::bail!(
            "{errors} problem{} in `{}` and `{}`: fix {} and run `recuerda check` again",
            if errors == 1 { "" } else { "s" },
            config.rules_dir.display(),
            config.templates_dir.display(),
            if errors == 1 { "it" } else { "them" },
        );
    }
    Ok(())
}

/// The text `check` prints, and the number of errors in it.
pub fn report(config: &Config) -> (String, usize) {
    let mut out = String::new();
    match RuleSet::load(&config.rules_dir, &config.templates_dir, config) {
        Ok(loaded) => {
            print_diagnostics(&mut out, &loaded.warnings);
            let set = &loaded.set;
            out.push_str(&routing_table(set));
            let warnings = if loaded.warnings.is_empty() {
                String::new()
            } else {
                format!(" ({})", summary(&loaded.warnings))
            };
            let _ = writeln!(
                out,
                "ok: {} rules, {} templates{warnings}",
                set.rules.len(),
                set.templates.len()
            );
            (out, 0)
        }
        Err(e) => {
            print_diagnostics(&mut out, &e.diagnostics);
            let _ = writeln!(out, "{}", summary(&e.diagnostics));
            let errors = e.diagnostics.iter().filter(|d| d.is_error()).count();
            (out, errors)
        }
    }
}

fn print_diagnostics(out: &mut String, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        let _ = writeln!(out, "{d}\n");
    }
}

/// The order reply rules are tried in, first match wins.
pub fn routing_table(set: &RuleSet) -> String {
    let rows: Vec<[String; 5]> = set
        .reply_rules()
        .enumerate()
        .map(|(i, (rule, t))| {
            [
                format!("{}.", i + 1),
                rule.name.clone(),
                t.custom_field.clone().unwrap_or_else(|| "(any)".into()),
                t.text
                    .as_ref()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_else(|| "(any)".into()),
                t.state.clone().unwrap_or_else(|| "(any)".into()),
            ]
        })
        .collect();
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("reply routing: no reply rules; every reply is stored as unhandled\n\n");
        return out;
    }
    out.push_str("reply routing (tried in this order, first match wins):\n");
    let header = [
        "".to_string(),
        "rule".into(),
        "custom_field".into(),
        "text".into(),
        "state".into(),
    ];
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    let disabled: Vec<&str> = set
        .rules
        .iter()
        .filter(|r| !r.enabled && matches!(r.trigger, Trigger::Reply(_)))
        .map(|r| r.name.as_str())
        .collect();
    if !disabled.is_empty() {
        let _ = writeln!(out, "  (disabled: {})", disabled.join(", "));
    }
    out.push('\n');
    out
}
