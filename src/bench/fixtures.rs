//! The rules, templates and records the benchmarks run on: one generator, so `recuerda bench`
//! and the criterion micro-benchmarks measure the same thing.

use crate::config::Config;
use crate::rules::{Action, RuleSet, SendAction, SharedRule};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The reply rule scenario (b) drives: a reply starting with `1` to a `bench-*` conversation.
pub const REPLY_RULE: &str = "confirma";
/// The cron rule scenario (c) fires by hand: every appointment starting tomorrow.
pub const CRON_RULE: &str = "recordatorio";
/// What a patient answers in scenario (b).
pub const REPLY_TEXT: &str = "1";

/// `(id, name, body, variables)` of the templates every benchmark loads.
pub const TEMPLATES: &[(u32, &str, &str, &[&str])] = &[
    (
        990,
        "Recordatorio de cita",
        "Hola *{1}*, le recordamos su cita con *{2}* el *{3}* a las *{4}*. Responda 1 para confirmar o 2 para cancelar.",
        &[
            "{{primer_nombre appointment.paciente}}",
            "{{appointment.profesional}}",
            "{{fecha appointment.start}}",
            "{{hora appointment.start}}",
        ],
    ),
    (
        991,
        "Respuesta registrada",
        "Gracias, recibimos su respuesta *{1}*. Lo esperamos.",
        &["{{mayusculas reply.message}}"],
    ),
];

/// The rules of the load scenarios: (b)'s reply rule first, then (c)'s cron rule, then
/// `filler` more (reply rules that never match the benchmark's replies, cron rules that never
/// fire during a run, offset reminders), so that scenario (d) can start with 200 rules.
pub fn load_rules_yaml(filler: usize) -> String {
    let mut out = String::from("rules:\n");
    let _ = write!(
        out,
        r#"  - name: {REPLY_RULE}
    trigger:
      reply: {{custom_field: "bench-*", text: "^(1|si|sí)\\b"}}
    actions:
      - set_state: confirmada
      - send: {{template: 991}}
  - name: {CRON_RULE}
    trigger: {{cron: "0 8 1 1 *"}}
    for_each: {{appointments: {{starts: tomorrow, status: [scheduled]}}}}
    actions:
      - send: {{template: 990, custom_field: "cita-{{{{appointment.id}}}}"}}
      - set_state: esperando_confirmacion
"#
    );
    for i in 0..filler {
        let _ = match i % 3 {
            0 => write!(
                out,
                r#"  - name: respuesta-{i}
    trigger:
      reply: {{custom_field: "otra-{i}-*", text: "^(opcion{i}|clave{i})\\b"}}
    actions:
      - set_state: estado-{i}
      - send: {{template: 991}}
"#
            ),
            1 => write!(
                out,
                r#"  - name: cron-{i}
    trigger: {{cron: "{minute} 3 1 1 *"}}
    for_each: {{appointments: {{starts: today}}}}
    actions:
      - send: {{template: 990, custom_field: "cron-{i}-{{{{appointment.id}}}}"}}
"#,
                minute = i % 60
            ),
            _ => write!(
                out,
                r#"  - name: antes-{i}
    trigger: {{before: {hours}h, late: skip}}
    where:
      appointment.sede: sede-{i}
    actions:
      - send: {{template: 990, custom_field: "antes-{i}-{{{{appointment.id}}}}"}}
"#,
                hours = 1 + i % 48
            ),
        };
    }
    out
}

/// `n` reply rules, tried in order; rule `i` takes `clave{i}` in a `bench-*` conversation.
pub fn reply_rules_yaml(n: usize) -> String {
    let mut out = String::from("rules:\n");
    for i in 0..n {
        let _ = write!(
            out,
            r#"  - name: respuesta-{i}
    trigger:
      reply: {{custom_field: "bench-*", text: "^(clave{i}|opcion{i})\\b"}}
    actions:
      - set_state: estado-{i}
      - send: {{template: 991}}
"#
        );
    }
    out
}

/// The text of a template file.
fn template_yaml(id: u32, name: &str, body: &str, variables: &[&str]) -> String {
    let mut out = format!("id: {id}\nname: {name:?}\nbody: {body:?}\nvariables:\n");
    for v in variables {
        let _ = writeln!(out, "  - {v:?}");
    }
    out
}

fn template_sources() -> Vec<(PathBuf, String)> {
    TEMPLATES
        .iter()
        .map(|(id, name, body, vars)| {
            (
                PathBuf::from(format!("templates/{id}.yaml")),
                template_yaml(*id, name, body, vars),
            )
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("the benchmark's generated rules do not load (a bug in `bench::fixtures`): {0}")]
    Rules(String),
    #[error("cannot write the benchmark's rules into `{path}`: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Loads the templates and the rules in `rules_yaml` from memory.
pub fn rule_set(rules_yaml: &str) -> Result<RuleSet, FixtureError> {
    let rules = vec![(PathBuf::from("rules/bench.yaml"), rules_yaml.to_string())];
    RuleSet::load_sources(&template_sources(), &rules, &Config::default())
        .map(|loaded| loaded.set)
        .map_err(|e| FixtureError::Rules(e.to_string()))
}

/// Writes `rules/bench.yaml` and `templates/*.yaml` under `dir` (what `serve` reads).
pub fn write_rules(dir: &Path, rules_yaml: &str) -> Result<(PathBuf, PathBuf), FixtureError> {
    let rules_dir = dir.join("rules");
    let templates_dir = dir.join("templates");
    let write = |path: PathBuf, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| FixtureError::Write {
                path: parent.display().to_string(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| FixtureError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    write(rules_dir.join("bench.yaml"), rules_yaml)?;
    for (path, text) in template_sources() {
        write(dir.join(path), &text)?;
    }
    Ok((rules_dir, templates_dir))
}

/// The first `send` action of `rule`.
pub fn first_send(rule: &SharedRule) -> Option<&SendAction> {
    rule.actions.iter().find_map(|a| match a {
        Action::Send(s) => Some(s),
        _ => None,
    })
}

/// A mobile the provider accepts, distinct for each `i` below 10⁹.
pub fn mobile(i: u64) -> String {
    format!("573{:09}", i % 1_000_000_000)
}

/// An appointment as the API takes it, starting at `start` (RFC 3339).
pub fn appointment_json(i: u64, start: &str) -> Value {
    const NAMES: [&str; 6] = [
        "carlos andrés pérez",
        "maría gómez",
        "luisa fernanda rojas",
        "jorge martínez",
        "ana sofía díaz",
        "camilo torres",
    ];
    json!({
        "id": format!("a{i}"),
        "mobile": mobile(i),
        "start": start,
        "status": "scheduled",
        "paciente": NAMES[(i % NAMES.len() as u64) as usize],
        "profesional": "Dra. Gómez",
        "sede": "norte",
    })
}

/// The rendering context of a reminder for appointment `i`, as the engine builds it.
pub fn reminder_context(i: u64) -> Value {
    let body = appointment_json(i, "2030-11-26T15:30:00-05:00");
    let appointment = crate::appointment::Appointment::from_json(
        &format!("a{i}"),
        &body,
        chrono::Utc::now(),
        None,
    )
    .map(|a| a.to_context())
    .unwrap_or(body);
    json!({
        "appointment": appointment,
        "conversation": {"custom_field": format!("cita-a{i}"), "state": null},
        "now": "2030-11-25T08:00:00-05:00",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rules_load_and_route() {
        let set = rule_set(&load_rules_yaml(198)).expect("rules load");
        assert_eq!(set.rules.len(), 200);
        let hit = set.match_reply(Some("bench-7"), REPLY_TEXT, None);
        assert_eq!(hit.map(|r| r.name.as_str()), Some(REPLY_RULE));

        let set = rule_set(&reply_rules_yaml(100)).expect("rules load");
        let hit = set.match_reply(Some("bench-1"), "clave99", None);
        assert_eq!(hit.map(|r| r.name.as_str()), Some("respuesta-99"));
        assert!(set.match_reply(Some("bench-1"), "nada", None).is_none());
    }

    #[test]
    fn the_reminder_renders() {
        let set = rule_set(&load_rules_yaml(0)).expect("rules load");
        let rule = set.rule(CRON_RULE).expect("cron rule");
        let send = first_send(rule).expect("a send");
        let rendered = set
            .render_send(rule, send, &reminder_context(3))
            .expect("renders");
        assert_eq!(rendered.variables[0], "Jorge");
        assert_eq!(rendered.custom_field.as_deref(), Some("cita-a3"));
    }
}
