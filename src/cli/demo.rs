//! `recuerda demo`: the engine on its built-in simulator, with a fast clock, sample
//! appointments and simulated patients — the first thing a newcomer runs.

use super::sandbox::{self, NotifySink, TempDir};
use crate::clock::{Clock, FastClock};
use crate::config::Config;
use crate::message::MessageStatus;
use crate::simulator::{PatientScript, ScriptedReply, Simulator};
use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, NaiveTime, TimeZone, Utc};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the demo runs, in real time (`40s`, `2m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    pub duration: Duration,
    /// Simulated seconds per real second (default: a simulated day in about a minute).
    #[arg(long, default_value_t = 1440.0)]
    pub speed: f64,
    /// Keep the store here instead of a temporary folder (e.g. `./demo-data`).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(text)
}

/// How a simulated patient behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persona {
    Confirms,
    Cancels,
    Nonsense,
    OptsOut,
    Silent,
    Unreachable,
}

impl Persona {
    fn reply(self) -> Option<&'static str> {
        match self {
            Persona::Confirms => Some("1"),
            Persona::Cancels => Some("2"),
            Persona::Nonsense => Some("¿a qué hora abren el sábado?"),
            Persona::OptsOut => Some("BAJA"),
            Persona::Silent | Persona::Unreachable => None,
        }
    }
}

const NAMES: [&str; 20] = [
    "Carlos Pérez",
    "María Gómez",
    "Andrés López",
    "Luisa Fernanda Rojas",
    "Jorge Martínez",
    "Ana Sofía Díaz",
    "Camilo Torres",
    "Valentina Ruiz",
    "Santiago Herrera",
    "Daniela Castro",
    "Felipe Vargas",
    "Paula Moreno",
    "Juan David Ortiz",
    "Laura Jiménez",
    "Sebastián Ríos",
    "Natalia Suárez",
    "Mateo Cárdenas",
    "Isabella Mejía",
    "Nicolás Parra",
    "Gabriela Peña",
];

fn persona_for(i: usize) -> Persona {
    match i {
        13 => Persona::OptsOut,
        17 => Persona::Unreachable,
        _ => match i % 5 {
            0 | 1 => Persona::Confirms,
            2 => Persona::Cancels,
            3 => Persona::Nonsense,
            _ => Persona::Silent,
        },
    }
}

fn mobile_for(i: usize) -> String {
    format!("5730055501{:02}", i)
}

pub async fn run(args: DemoArgs, base: Config) -> anyhow::Result<()> {
    let tz = base.timezone;
    // Start the simulated clock just before 8:00 today, so the day-before cron fires early on.
    let today = Utc::now().with_timezone(&tz).date_naive();
    let start_local = today.and_time(NaiveTime::from_hms_opt(7, 50, 0).unwrap_or_default());
    let start: DateTime<Utc> = tz
        .from_local_datetime(&start_local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let clock = Arc::new(FastClock::new(start, args.speed));

    let mut config = base.clone();
    let rules = crate::app::load_rules(&config).context("the demo runs the shipped rules")?;
    let (_tempdir, data_dir) = match &args.data_dir {
        Some(d) => {
            if d.exists() {
                std::fs::remove_dir_all(d)
                    .with_context(|| format!("cannot clear `{}`", d.display()))?;
            }
            (None, d.clone())
        }
        None => {
            let t = TempDir::new("demo")?;
            let p = t.path().join("store");
            (Some(t), p)
        }
    };
    config.data_dir = data_dir;

    // The provider simulator knows the same templates and plays the patients.
    let mut patients = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for i in 0..NAMES.len() {
        let persona = persona_for(i);
        if persona == Persona::Unreachable {
            failures.insert(mobile_for(i), 1002u16);
        }
        let replies = persona
            .reply()
            .map(|text| {
                vec![ScriptedReply {
                    text: text.to_string(),
                    delay: Some(Duration::from_millis(300)),
                }]
            })
            .unwrap_or_default();
        patients.insert(
            mobile_for(i),
            PatientScript {
                replies,
                read: persona != Persona::Silent,
            },
        );
    }
    let sim = Simulator::start(
        sandbox::sim_config(&rules, patients, failures),
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("cannot start the provider simulator")?;
    // Notifications for reception go to a local sink that counts them.
    let sink = NotifySink::start().await?;
    sandbox::use_simulator(&mut config, &sim, &sink.url);
    config.quiet_hours = None;

    let running = crate::app::start(config, rules, clock.clone(), "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the engine")?;
    sim.set_webhook_url(running.webhook_url())?;

    let style = Style::detect();
    println!(
        "{}",
        style.bold(&format!(
            "recuerda demo — {} appointments, simulated clock from {} at {}× (a day ≈ {:.0} s), running {}",
            NAMES.len(),
            start.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
            args.speed,
            86_400.0 / args.speed,
            crate::duration::format_duration(args.duration)
        ))
    );

    // Appointments around now: later today and tomorrow, booked through the engine.
    for (i, name) in NAMES.iter().enumerate() {
        let hours = if i % 2 == 0 {
            4 + i as i64 / 2
        } else {
            26 + i as i64 / 2
        };
        let when = (start + ChronoDuration::hours(hours)).with_timezone(&tz);
        let body = json!({
            "mobile": mobile_for(i),
            "start": when.to_rfc3339(),
            "status": "scheduled",
            "paciente": name,
            "profesional": if i % 3 == 0 { "Dra. Gómez" } else { "Dr. Salazar" },
            "sede": if i % 2 == 0 { "norte" } else { "centro" },
        });
        running
            .engine
            .upsert_appointment(&format!("demo-{:02}", i + 1), &body)
            .map_err(|e| anyhow::anyhow!("seeding appointment {}: {e:?}", i + 1))?;
    }
    running.engine.store.durable().await?;

    let deadline = tokio::time::Instant::now() + args.duration;
    let mut seen_sends = 0;
    let mut seen_callbacks = 0;
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            _ = tokio::time::sleep_until(deadline) => true,
            _ = tokio::signal::ctrl_c() => true,
        };
        let now = clock.now().with_timezone(&tz);
        let sends = sim.sends();
        for s in &sends[seen_sends..] {
            let first_line = s.text.lines().next().unwrap_or_default();
            println!(
                "{} {} template {} to {}: {}",
                style.dim(&now.format("%a %H:%M").to_string()),
                style.green("→ sent    "),
                s.template_id,
                crate::engine::mask(&s.mobile),
                truncate(first_line, 90)
            );
        }
        seen_sends = sends.len();
        let callbacks = sim.callbacks();
        for c in &callbacks[seen_callbacks..] {
            let payload = &c.payload;
            let line = if let Some(kind) = payload.get("type2").and_then(|v| v.as_str()) {
                let kind = kind.trim();
                if kind == "sent" {
                    continue;
                }
                let label = format!("← {kind:<9}");
                let label = if kind == "failed" {
                    style.red(&label)
                } else {
                    style.cyan(&label)
                };
                let id = payload
                    .get("&messageId")
                    .or_else(|| payload.get("messageId"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                let extra = payload
                    .get("reason")
                    .and_then(|v| v.as_str())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("{label} message {}{extra}", truncate(id, 8))
            } else {
                format!(
                    "{} {} says {:?} on {}",
                    style.yellow("← reply    "),
                    crate::engine::mask(
                        payload
                            .get("mobile")
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                    ),
                    payload
                        .get("message")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default(),
                    payload
                        .get("custom_field")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                )
            };
            println!("{} {line}", style.dim(&now.format("%a %H:%M").to_string()));
        }
        seen_callbacks = callbacks.len();
        if stop {
            break;
        }
    }

    // Let what is in flight settle briefly, then stop everything and summarize.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = running.engine.drain_inbox().await;
    let summary = Summary::collect(&running.engine, sink.received())?;
    let engine = running.engine.clone();
    running.shutdown().await;
    sim.shutdown().await;
    println!();
    print!("{}", summary.table(&style));
    drop(engine);
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// The appointment status a rule's `update_appointment` sets, if any.
fn status_set_by(rules: &crate::rules::RuleSet, name: &str) -> Option<String> {
    rules.rule(name)?.actions.iter().find_map(|a| match a {
        crate::rules::Action::UpdateAppointment(fields) => fields
            .get("status")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Per-rule counts at the end of the demo.
#[derive(Debug, Default)]
struct Summary {
    rows: BTreeMap<String, [u64; 9]>,
    opted_out: u64,
    notified: u64,
    unhandled: u64,
}

const COLUMNS: [&str; 9] = [
    "queued",
    "sent",
    "delivered",
    "read",
    "replied",
    "confirmed",
    "cancelled",
    "failed",
    "skipped",
];

impl Summary {
    fn collect(engine: &crate::engine::Engine, notified: u64) -> anyhow::Result<Summary> {
        let rules = engine.rules();
        let mut s = Summary {
            notified,
            ..Default::default()
        };
        let mut replied_conversations = BTreeSet::new();
        for r in engine.store.replies() {
            let r = r?;
            match r.outcome.as_str() {
                "opted_out" => s.opted_out += 1,
                "unhandled" => s.unhandled += 1,
                _ => {}
            }
            if let Some(cf) = &r.custom_field {
                replied_conversations.insert(cf.clone());
            }
            if let Some(rule) = &r.rule {
                let row = s.rows.entry(rule.clone()).or_default();
                row[4] += 1;
                // What the rule does, not what it is called: it sets the appointment's status.
                match status_set_by(&rules, rule).as_deref() {
                    Some("confirmed") => row[5] += 1,
                    Some("cancelled") => row[6] += 1,
                    _ => {}
                }
            }
        }
        for entry in engine.store.outbox_entries() {
            let e = entry?;
            if !e.is_send() {
                continue;
            }
            let row = s.rows.entry(e.rule.clone()).or_default();
            row[0] += 1;
            let reached =
                |st: MessageStatus| e.timeline.iter().any(|c| c.applied && c.status == st);
            if e.message_id.is_some() {
                row[1] += 1;
            }
            if reached(MessageStatus::Delivered) || reached(MessageStatus::Read) {
                row[2] += 1;
            }
            if reached(MessageStatus::Read) {
                row[3] += 1;
            }
            match e.status {
                MessageStatus::Failed | MessageStatus::Unknown => row[7] += 1,
                MessageStatus::Skipped => row[8] += 1,
                _ => {}
            }
        }
        Ok(s)
    }

    fn totals(&self) -> [u64; 9] {
        let mut t = [0; 9];
        for row in self.rows.values() {
            for (i, v) in row.iter().enumerate() {
                t[i] += v;
            }
        }
        t
    }

    fn table(&self, style: &Style) -> String {
        let width = self.rows.keys().map(|k| k.len()).max().unwrap_or(4).max(5);
        let mut out = String::new();
        out.push_str(&style.bold(&format!("{:<width$}", "rule")));
        for c in COLUMNS {
            out.push_str(&style.bold(&format!(" {c:>9}")));
        }
        out.push('\n');
        for (rule, row) in &self.rows {
            out.push_str(&format!("{rule:<width$}"));
            for v in row {
                out.push_str(&format!(" {v:>9}"));
            }
            out.push('\n');
        }
        out.push_str(&style.bold(&format!("{:<width$}", "total")));
        for v in self.totals() {
            out.push_str(&style.bold(&format!(" {v:>9}")));
        }
        out.push('\n');
        out.push_str(&format!(
            "opted out: {}   unhandled replies: {}   notifications to reception: {}\n",
            self.opted_out, self.unhandled, self.notified
        ));
        out
    }
}

/// ANSI colour on a terminal, plain text otherwise.
struct Style {
    colour: bool,
}

impl Style {
    fn detect() -> Style {
        Style {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
}
