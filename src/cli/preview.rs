//! `recuerda preview RULE --appointment FILE.json`: what a rule would do for one appointment —
//! the exact WhatsApp text and the form fields that would be posted — without sending anything.

use crate::config::Config;
use crate::rules::{Action, EventKind, Rule, RuleSet, Trigger};
use anyhow::{bail, Context as _};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// The rule's `name`.
    pub rule: String,
    /// The appointment, as JSON (the API's shape: mobile, start, status, paciente, …).
    #[arg(long, value_name = "FILE.json")]
    pub appointment: PathBuf,
    /// The patient's reply, for reply rules.
    #[arg(long, value_name = "TEXT")]
    pub reply: Option<String>,
    /// The time the rule runs at (`now`): RFC 3339, or `2026-11-25 08:00` in the rule's zone.
    /// Default: now.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

pub async fn run(args: PreviewArgs, config: Config) -> anyhow::Result<()> {
    let set = match RuleSet::load(&config.rules_dir, &config.templates_dir, &config) {
        Ok(loaded) => loaded.set,
        Err(e) => bail!("{e}"),
    };
    let text = std::fs::read_to_string(&args.appointment)
        .with_context(|| format!("cannot read `{}`", args.appointment.display()))?;
    let appointment: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "`{}` is not JSON: write the appointment as the API takes it, e.g. {{\"mobile\": \"+57 310 233 4455\", \"start\": \"2026-11-26T15:30:00-05:00\", \"status\": \"scheduled\", \"paciente\": \"Carlos Pérez\"}}",
            args.appointment.display()
        )
    })?;
    let out = preview(
        &set,
        &config,
        &args.rule,
        appointment,
        &args.appointment,
        args.reply.as_deref(),
        args.at.as_deref(),
    )?;
    print!("{out}");
    Ok(())
}

/// The preview text of rule `name` for `appointment` (read from `source`, whose file stem is
/// the appointment's id when it has none).
pub fn preview(
    set: &RuleSet,
    config: &Config,
    name: &str,
    appointment: Value,
    source: &Path,
    reply: Option<&str>,
    at: Option<&str>,
) -> anyhow::Result<String> {
    let Some(rule) = set.rule(name) else {
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        let close = crate::rules::diagnostic::suggestion(name, names.iter().copied());
        bail!(
            "no rule named `{name}` in `{}`{}{}",
            config.rules_dir.display(),
            if close.is_empty() { "" } else { ": " },
            if close.is_empty() {
                format!(" (rules: {})", names.join(", "))
            } else {
                close
            }
        );
    };
    let Value::Object(mut appointment) = appointment else {
        bail!(
            "`{}` must hold one JSON object (the appointment)",
            source.display()
        );
    };
    if !appointment.contains_key("id") {
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vista-previa".into());
        appointment.insert("id".into(), Value::String(stem));
    }
    let now = parse_at(at, rule.timezone)?;
    let id = appointment.get("id").cloned().unwrap_or(Value::Null);
    let id_text = match &id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mobile = appointment.get("mobile").cloned().unwrap_or(Value::Null);
    let mut ctx = json!({
        "appointment": Value::Object(appointment),
        "now": now.with_timezone(&rule.timezone).to_rfc3339(),
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rule `{}`{} ({})",
        rule.name,
        rule.description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default(),
        rule.source
    );
    let _ = writeln!(
        out,
        "now: {} ({})",
        now.with_timezone(&rule.timezone).to_rfc3339(),
        rule.timezone.name()
    );
    match &rule.trigger {
        Trigger::Reply(t) => {
            let Some(text) = reply else {
                bail!(
                    "rule `{}` answers a patient's reply: pass the reply with `--reply TEXT`, e.g. `--reply 1`",
                    rule.name
                );
            };
            // The conversation this reply belongs to: the rule's glob with the appointment id.
            let custom_field = t
                .custom_field
                .as_deref()
                .map(|g| g.replacen('*', &id_text, 1).replace(['*', '?'], ""));
            let state = t.state.clone();
            ctx["reply"] = json!({"mobile": mobile, "message": text, "custom_field": custom_field});
            ctx["conversation"] = json!({
                "custom_field": custom_field, "state": state, "mobile": mobile, "appointment_id": id,
            });
            let handler = set.match_reply_in(custom_field.as_deref(), text, state.as_deref(), &ctx);
            match handler {
                Some(h) if h.name == rule.name => {
                    let _ = writeln!(out, "reply: {text:?} is handled by this rule");
                }
                Some(h) => {
                    let _ = writeln!(
                        out,
                        "note: the reply routing would hand reply {text:?} to rule `{}`, not to this one; showing `{}` anyway",
                        h.name, rule.name
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "note: reply {text:?} matches no reply rule (it would be stored as unhandled); showing `{}` anyway",
                        rule.name
                    );
                }
            }
        }
        Trigger::Status(t) => {
            let (status, code, reason) = match t.status {
                EventKind::Delivered => ("delivered", Value::Null, Value::Null),
                EventKind::Read => ("read", Value::Null, Value::Null),
                EventKind::Failed => (
                    "failed",
                    json!("1002"),
                    json!("number not active on WhatsApp"),
                ),
            };
            ctx["message"] = json!({
                "id": "vista-previa", "status": status, "code": code, "reason": reason,
                "rule": t.rule.clone().unwrap_or_else(|| "recordatorio-dia-antes".into()),
            });
            let _ = writeln!(out, "delivery event: {status} (example values)");
        }
        Trigger::NoReply(t) => {
            ctx["message"] = json!({
                "id": "vista-previa", "status": "read", "code": null, "reason": null, "rule": t.rule,
            });
        }
        _ => {}
    }
    if !rule.conditions_hold(&ctx) {
        let failing: Vec<String> = rule
            .conditions
            .iter()
            .filter(|c| !c.holds(&ctx))
            .map(|c| {
                let found = crate::rules::set::lookup(&ctx, &c.path)
                    .map(Value::to_string)
                    .unwrap_or_else(|| "missing".into());
                format!("`{}` is {found}", c.path)
            })
            .collect();
        let _ = writeln!(
            out,
            "note: `where:` does not hold ({}): the engine would not run this rule for this appointment",
            failing.join(", ")
        );
    }
    if !rule.enabled {
        let _ = writeln!(out, "note: the rule is disabled (`enabled: false`)");
    }
    out.push('\n');
    write_actions(&mut out, set, config, rule, &ctx, &mobile)?;
    Ok(out)
}

fn write_actions(
    out: &mut String,
    set: &RuleSet,
    config: &Config,
    rule: &Rule,
    ctx: &Value,
    mobile: &Value,
) -> anyhow::Result<()> {
    for (i, action) in rule.actions.iter().enumerate() {
        let n = i + 1;
        match action {
            Action::Send(send) => {
                let rendered = set
                    .render_send(rule, send, ctx)
                    .map_err(anyhow::Error::msg)?;
                let template_name = set
                    .templates
                    .get(&send.template_id)
                    .map(|t| t.name.as_str())
                    .unwrap_or("?");
                let _ = writeln!(
                    out,
                    "{n}. send template {} \"{template_name}\"",
                    send.template_id
                );
                let _ = writeln!(out, "   WhatsApp text:");
                for line in rendered.text.lines() {
                    let _ = writeln!(out, "   | {line}");
                }
                // The number exactly as it would be posted: normalized, or why it would be refused.
                let normalized = |raw: &str| match crate::provider::Mobile::parse(raw) {
                    Ok(m) => m.as_str().to_string(),
                    Err(e) => format!("(refused before any call: {e})"),
                };
                let to = match &rendered.to {
                    Some(to) => normalized(to),
                    None => match mobile {
                        Value::String(s) => {
                            format!("{}  (the appointment's mobile)", normalized(s))
                        }
                        Value::Null => "(none: the appointment has no `mobile`)".into(),
                        other => other.to_string(),
                    },
                };
                let variables = crate::provider::Variables::wire_text(&rendered.variables);
                let _ = writeln!(
                    out,
                    "   form fields (POST {}/send/):",
                    config.provider.base_url
                );
                let fields = [
                    (
                        "login",
                        config
                            .provider
                            .login
                            .clone()
                            .unwrap_or_else(|| "(not set: `provider.login`)".into()),
                    ),
                    ("token", "***".into()),
                    ("id_template", send.template_id.to_string()),
                    ("mobile", to),
                    ("template_variables", variables),
                    (
                        "media",
                        rendered.media.clone().unwrap_or_else(|| "(none)".into()),
                    ),
                    (
                        "custom_field",
                        rendered
                            .custom_field
                            .clone()
                            .unwrap_or_else(|| "(generated by the engine)".into()),
                    ),
                ];
                for (key, value) in fields {
                    let _ = writeln!(out, "     {key:<19} {value}");
                }
            }
            Action::SetState(state) => {
                let _ = writeln!(out, "{n}. set conversation state to `{state}`");
            }
            Action::UpdateAppointment(fields) => {
                let _ = writeln!(
                    out,
                    "{n}. update the appointment: {}",
                    Value::Object(fields.clone())
                );
            }
            Action::Notify(notify) => {
                let url = config
                    .notify
                    .get(&notify.endpoint)
                    .map(|e| e.url.as_str())
                    .unwrap_or("?");
                let _ = writeln!(out, "{n}. notify `{}` (POST {url})", notify.endpoint);
                if let Some(key) = &notify.message {
                    let message = set
                        .render_text(rule, key, ctx)
                        .map_err(anyhow::Error::msg)?;
                    let _ = writeln!(out, "   message: {message}");
                }
            }
        }
    }
    Ok(())
}

/// `--at`: RFC 3339, or a local `YYYY-MM-DD HH:MM[:SS]` (or with `T`) in `tz`; default now.
fn parse_at(at: Option<&str>, tz: Tz) -> anyhow::Result<DateTime<Utc>> {
    let Some(text) = at else {
        return Ok(Utc::now());
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            if let Some(t) = tz.from_local_datetime(&naive).earliest() {
                return Ok(t.with_timezone(&Utc));
            }
        }
    }
    bail!(
        "`--at {text}` is not a time: write `2026-11-25 08:00` (in {}) or `2026-11-25T08:00:00-05:00`",
        tz.name()
    )
}
