//! `recuerda simulate --from T --to T2`: the real rules, engine, scheduler and dispatcher on a
//! manual clock, over given (or the running engine's stored) appointments and scripted
//! replies, printing the timeline of what would be sent, when and to whom — or why not.
//!
//! Nothing leaves the machine: the provider is the in-process simulator, the store a temporary
//! folder, and `notify` endpoints a local sink. The live store is never opened (sled locks it
//! while `serve` runs); without `--appointments`, the stored appointments are read through the
//! running engine's API. The appointments are taken as already booked: `appointment: created`
//! rules do not run for them, and nothing counts as sent before `--from`.

use super::sandbox::{self, NotifySink, TempDir};
use crate::appointment::Appointment;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::engine::{mask, Engine};
use crate::import::{parse_time, read_file, Mapping};
use crate::message::{MessageStatus, OutboxEntry, OutboxKind};
use crate::provider::{Client, Mobile};
use crate::rules::{OffsetDirection, RuleSet, StartsSelector, Trigger};
use crate::simulator::{DeliveryEvent, Simulator};
use crate::store::Store;
use anyhow::{bail, Context as _};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long (in real time) one simulated instant may take to settle before we give up.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Start of the simulated period: RFC 3339, or `2026-11-26 07:00` in the config's `timezone`.
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the simulated period (same formats as `--from`).
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// The appointments (CSV or JSON, read as `recuerda import` reads them). Without it, the
    /// running engine's stored appointments are read through its API.
    #[arg(long, value_name = "FILE")]
    pub appointments: Option<PathBuf>,
    /// A column's field in the appointments file, as for `recuerda import` (repeatable).
    #[arg(long = "map", value_name = "COLUMN=FIELD")]
    pub map: Vec<String>,
    /// Scripted replies (YAML list): `- {appointment: A1, text: "1", after: 30m}` — the
    /// patient answers `text` that long after the first message they receive (`mobile:`
    /// instead of `appointment:` works too).
    #[arg(long, value_name = "FILE.yaml")]
    pub replies: Option<PathBuf>,
    /// The running engine to read stored appointments from (default: `http://` + `listen`).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Its API token (default: `api.token` from the config, or RECUERDA_API_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Delivery events for every message sent, so that `status:` rules run: `delivered` (one
    /// minute after it was sent) or `read` (delivered, then read ten minutes after it was
    /// sent); `none` sends no events.
    #[arg(long, value_enum, default_value_t = Delivery::None)]
    pub delivery: Delivery,
}

/// Which delivery events the simulated provider sends for each message (see `--delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    None,
    Delivered,
    Read,
}

/// When after a message is sent its delivery events come.
const DELIVERED_AFTER: ChronoDuration = ChronoDuration::minutes(1);
const READ_AFTER: ChronoDuration = ChronoDuration::minutes(10);

/// A delivery event due to the engine.
#[derive(Debug, Clone)]
struct DeliveryDue {
    at: DateTime<Utc>,
    event: DeliveryEvent,
    message_id: String,
}

/// The delivery events of the messages sent so far: planned once per message.
#[derive(Debug, Default)]
struct Deliveries {
    kind: Option<Delivery>,
    planned: HashSet<String>,
    due: Vec<DeliveryDue>,
    sent: usize,
}

/// One scripted reply.
#[derive(Debug, Clone)]
struct Script {
    /// Whose first message it answers.
    who: Who,
    text: String,
    after: ChronoDuration,
    /// Set once the patient's first message is sent.
    due: Option<(DateTime<Utc>, String, String)>,
    done: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Who {
    Appointment(String),
    Mobile(String),
}

pub async fn run(args: SimulateArgs, config: Config) -> anyhow::Result<()> {
    let tz = config.timezone;
    let from = parse_time(&args.from, tz)
        .map_err(|e| anyhow::anyhow!("`--from`: {e}"))?
        .with_timezone(&Utc);
    let to = parse_time(&args.to, tz)
        .map_err(|e| anyhow::anyhow!("`--to`: {e}"))?
        .with_timezone(&Utc);
    if to <= from {
        bail!("`--to` must be after `--from`");
    }
    let rules = crate::app::load_rules(&config)?;
    let (appointments, source) = match &args.appointments {
        Some(path) => {
            let parsed = read_file(path, &Mapping::from_args(&args.map)?, tz, from)?;
            for note in &parsed.notes {
                eprintln!("note: {note}");
            }
            for bad in &parsed.bad {
                eprintln!("{bad} (left out)");
            }
            let list: Vec<Appointment> = parsed.rows.into_iter().map(|r| r.appointment).collect();
            (list, format!("`{}`", path.display()))
        }
        None => {
            let base = args
                .url
                .clone()
                .unwrap_or_else(|| super::import::default_url(&config));
            let token = args
                .token
                .clone()
                .or_else(|| config.api.token.as_ref().map(|t| t.expose().to_string()));
            let list = fetch_stored(&base, token.as_deref(), &rules, from, to).await?;
            (list, format!("the engine at {base}"))
        }
    };
    let scripts = match &args.replies {
        Some(path) => read_scripts(path, &appointments)?,
        None => Vec::new(),
    };
    let out = simulate(
        config,
        rules,
        appointments,
        scripts,
        args.delivery,
        from,
        to,
        &source,
    )
    .await?;
    print!("{out}");
    Ok(())
}

/// Reads the running engine's appointments that the period can touch.
async fn fetch_stored(
    base: &str,
    token: Option<&str>,
    rules: &RuleSet,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<Appointment>> {
    let Some(token) = token else {
        bail!("give the appointments with `--appointments FILE`, or set `api.token` (or RECUERDA_API_TOKEN) so simulate can read the running engine's");
    };
    let (lookback, lookahead) = reach(rules);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let response = http
        .get(format!("{base}/api/v1/appointments"))
        .query(&[
            ("from", (from - lookback).to_rfc3339()),
            ("to", (to + lookahead).to_rfc3339()),
        ])
        .bearer_auth(token)
        .send()
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot read the stored appointments from {base}: the live store cannot be opened while `recuerda serve` runs, so simulate asks the running engine; start it, or pass `--appointments FILE`"
            )
        })?;
    match response.status().as_u16() {
        200 => {}
        401 => bail!("the engine at {base} refused the API token (401): check `api.token`, RECUERDA_API_TOKEN or `--token`"),
        status => bail!("the engine at {base} answered HTTP {status} to `GET /api/v1/appointments`"),
    }
    let body: Value = response
        .json()
        .await
        .context("the engine's appointment list is not JSON")?;
    let now = Utc::now();
    let mut out = Vec::new();
    for item in body["appointments"].as_array().into_iter().flatten() {
        let id = item["id"].as_str().unwrap_or_default();
        match Appointment::from_json(id, item, now, None) {
            Ok(a) => out.push(a),
            Err(errors) => eprintln!("stored appointment `{id}` left out: {errors:?}"),
        }
    }
    Ok(out)
}

/// How far before `--from` and after `--to` an appointment's start can be and still matter.
fn reach(rules: &RuleSet) -> (ChronoDuration, ChronoDuration) {
    let (mut back, mut ahead) = (ChronoDuration::days(1), ChronoDuration::days(2));
    let longer = |d: std::time::Duration, base: ChronoDuration| {
        ChronoDuration::from_std(d).unwrap_or(base) + ChronoDuration::days(1)
    };
    for rule in &rules.rules {
        if let Trigger::Offset(o) = &rule.trigger {
            match o.direction {
                OffsetDirection::Before => ahead = ahead.max(longer(o.offset, ahead)),
                OffsetDirection::After => back = back.max(longer(o.offset, back)),
            }
        }
        if let Some(StartsSelector::Window { to, .. }) = rule.for_each.as_ref().map(|f| &f.starts) {
            ahead = ahead.max(longer(*to, ahead));
        }
    }
    (back, ahead)
}

/// Reads the scripted replies: a YAML list of `{appointment | mobile, text, after}`.
fn read_scripts(
    path: &std::path::Path,
    appointments: &[Appointment],
) -> anyhow::Result<Vec<Script>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let shown = path.display();
    let items: Vec<Value> = serde_yaml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("`{shown}` is not a YAML list of replies ({e}): write `- {{appointment: A1, text: \"1\", after: 30m}}`")
    })?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let Some(object) = item.as_object() else {
            bail!(
                "`{shown}` reply {n}: write it as `{{appointment: A1, text: \"1\", after: 30m}}`"
            );
        };
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "appointment" | "mobile" | "text" | "after"))
        {
            bail!("`{shown}` reply {n}: unknown key `{key}` (keys: appointment or mobile, text, after)");
        }
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let who = match (object.get("appointment"), object.get("mobile")) {
            (Some(a), None) => {
                let id = scalar(a).unwrap_or_default();
                if !appointments.iter().any(|x| x.id == id) {
                    bail!("`{shown}` reply {n}: no appointment `{id}` among the simulated ones");
                }
                Who::Appointment(id)
            }
            (None, Some(m)) => {
                let text = scalar(m).unwrap_or_default();
                let mobile = Mobile::parse(&text)
                    .map_err(|e| anyhow::anyhow!("`{shown}` reply {n}: `mobile`: {e}"))?;
                Who::Mobile(mobile.as_str().to_string())
            }
            _ => bail!("`{shown}` reply {n}: say whose reply it is with `appointment:` or `mobile:` (one of them)"),
        };
        let Some(text) = object.get("text").and_then(scalar) else {
            bail!("`{shown}` reply {n}: `text` is required, e.g. `text: \"1\"`");
        };
        let after = match object.get("after").and_then(scalar) {
            Some(a) => crate::duration::parse_duration(&a)
                .map_err(|e| anyhow::anyhow!("`{shown}` reply {n}: `after`: {e}"))?,
            None => std::time::Duration::ZERO,
        };
        out.push(Script {
            who,
            text,
            after: ChronoDuration::from_std(after).unwrap_or(ChronoDuration::zero()),
            due: None,
            done: false,
        });
    }
    Ok(out)
}

/// Runs the period on a manual clock and returns the printed timeline.
#[allow(clippy::too_many_arguments)]
async fn simulate(
    mut config: Config,
    rules: RuleSet,
    appointments: Vec<Appointment>,
    mut scripts: Vec<Script>,
    delivery: Delivery,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    source: &str,
) -> anyhow::Result<String> {
    let tz = config.timezone;
    let n_rules = rules.rules.len();
    let rules_dir = config.rules_dir.display().to_string();
    let folder = TempDir::new("simulate")?;
    config.data_dir = folder.path().join("store");
    let sim = Simulator::start(
        sandbox::sim_config(&rules, BTreeMap::new(), BTreeMap::new()),
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("cannot start the provider simulator")?;
    let sink = NotifySink::start().await?;
    sandbox::use_simulator(&mut config, &sim, &sink.url);
    config.provider.rate_per_second = 1000;
    config.provider.concurrency = config.provider.concurrency.max(8);

    let clock = Arc::new(ManualClock::new(from));
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create `{}`", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir)?;
    // A cron slot at exactly `--from` belongs to the period.
    for rule in &rules.rules {
        if matches!(rule.trigger, Trigger::Cron(_)) {
            store.set_cron_last(&rule.name, from - ChronoDuration::milliseconds(1))?;
        }
    }
    let provider = Client::new(&config.provider)?;
    let engine = Engine::new(Arc::new(config), store, rules, provider, clock.clone())?;
    for appt in &appointments {
        // Already booked: stored and planned, without `appointment: created` reactions.
        engine.store.put_appointment(appt)?;
        engine.plan_appointment(appt, from)?;
    }
    // Reminders whose time was before `--from` were recorded while planning: not the period's.
    let before: HashSet<String> = engine
        .store
        .fired_all()
        .map(|item| item.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    engine.start().await?;

    let mut deliveries = Deliveries {
        kind: (delivery != Delivery::None).then_some(delivery),
        ..Deliveries::default()
    };
    let result = drive(&engine, &clock, &mut scripts, &mut deliveries, from, to).await;
    let timeline = result.and_then(|()| Timeline::collect(&engine, &appointments, &before, tz));
    let sends_received = sim.sends().len();
    engine.shutdown().await;
    sim.shutdown().await;
    drop(folder);
    let timeline = timeline?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "recuerda simulate: {} → {} ({}), {} appointments from {source}, scripted replies: {}",
        local(from, tz),
        local(to, tz),
        tz.name(),
        appointments.len(),
        scripts.len()
    );
    let _ = writeln!(
        out,
        "rules: {n_rules} from `{rules_dir}`; provider: the in-process simulator at {} (nothing is sent)",
        sim.base_url()
    );
    out.push('\n');
    out.push_str(&timeline.render(tz));
    let _ = writeln!(
        out,
        "\n{} sent, {} skipped, {} refused, {} replies, {} notifications; the simulator received {sends_received} sends",
        timeline.sent, timeline.skipped, timeline.refused, timeline.replies, timeline.notified
    );
    let _ = match deliveries.kind {
        None => writeln!(
            out,
            "delivery events: none (`--delivery delivered` or `read` to run `status:` rules)"
        ),
        Some(kind) => writeln!(
            out,
            "delivery events: {} ({}, from a minute after each send)",
            deliveries.sent,
            if kind == Delivery::Read {
                "delivered, then read"
            } else {
                "delivered"
            }
        ),
    };
    for script in scripts.iter().filter(|s| !s.done) {
        let who = match &script.who {
            Who::Appointment(id) => format!("appointment `{id}`"),
            Who::Mobile(m) => mask(m),
        };
        let _ = writeln!(
            out,
            "scripted reply {:?} from {who} never went: no message reached them in the period",
            script.text
        );
    }
    Ok(out)
}

/// Moves the clock from event to event (due entries, cron slots, queued sends, scripted
/// replies), letting the engine settle at each.
async fn drive(
    engine: &Engine,
    clock: &ManualClock,
    scripts: &mut [Script],
    deliveries: &mut Deliveries,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut now = from;
    loop {
        settle(engine, now).await?;
        // One read of the messages sent serves both, and none when neither asks.
        if deliveries.kind.is_some() || scripts.iter().any(|s| s.due.is_none()) {
            let sent = sent_messages(engine);
            plan_scripts(&sent, scripts);
            plan_deliveries(&sent, deliveries);
        }
        let mut replied = false;
        let (due, later): (Vec<DeliveryDue>, Vec<DeliveryDue>) =
            std::mem::take(&mut deliveries.due)
                .into_iter()
                .partition(|d| d.at <= now);
        deliveries.due = later;
        for d in due {
            let body = crate::simulator::event_payload(
                d.event,
                &d.message_id,
                &format!("wamid.{}", d.message_id),
                None,
                d.at,
            );
            engine
                .accept_webhook(body.to_string().as_bytes())
                .await
                .context("the engine did not take a delivery event")?;
            deliveries.sent += 1;
            replied = true;
        }
        for script in scripts.iter_mut().filter(|s| !s.done) {
            let Some((due, mobile, custom_field)) = &script.due else {
                continue;
            };
            if *due <= now {
                let body = crate::simulator::reply_payload(mobile, &script.text, custom_field);
                engine
                    .accept_webhook(body.to_string().as_bytes())
                    .await
                    .context("the engine did not take a scripted reply")?;
                script.done = true;
                replied = true;
            }
        }
        if replied {
            continue;
        }
        let next = next_event(engine, now, scripts)?
            .into_iter()
            .chain(deliveries.due.iter().map(|d| d.at).filter(|t| *t > now))
            .min()
            .filter(|t| *t <= to);
        match next {
            Some(t) => now = t,
            None if now < to => now = to,
            None => return Ok(()),
        }
        clock.set(now);
    }
}

/// Ticks the scheduler and processes the inbox until nothing more happens at `now`, waiting
/// for the dispatcher to finish every send due.
async fn settle(engine: &Engine, now: DateTime<Utc>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        let fired = engine.tick().await?;
        let drained = engine.drain_inbox().await?;
        loop {
            let busy = !engine.store.due_outbox(now, 1)?.is_empty()
                || engine.store.inbox_depth() > 0
                // Sends a reply handed off are in no stored queue until done with.
                || engine.store.unfinished_replies() > 0
                || engine
                    .store
                    .outbox_entries()
                    .filter_map(Result::ok)
                    .any(|e| e.status == MessageStatus::Sending);
            if !busy {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the simulation stalled at {now}: sends due then did not finish");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if fired == 0 && drained == 0 {
            return Ok(());
        }
    }
}

/// Plans the delivery events of each message sent since the last look.
fn plan_deliveries(sent: &[(DateTime<Utc>, OutboxEntry)], deliveries: &mut Deliveries) {
    let Some(kind) = deliveries.kind else {
        return;
    };
    for (at, e) in sent {
        let Some(id) = e.message_id.as_ref() else {
            continue;
        };
        if !deliveries.planned.insert(id.clone()) {
            continue;
        }
        let mut due = |after: ChronoDuration, event: DeliveryEvent| {
            deliveries.due.push(DeliveryDue {
                at: *at + after,
                event,
                message_id: id.clone(),
            })
        };
        due(DELIVERED_AFTER, DeliveryEvent::Delivered);
        if kind == Delivery::Read {
            due(READ_AFTER, DeliveryEvent::Read);
        }
    }
}

/// The messages the provider accepted so far, with when, earliest first.
fn sent_messages(engine: &Engine) -> Vec<(DateTime<Utc>, OutboxEntry)> {
    let mut sent: Vec<(DateTime<Utc>, OutboxEntry)> = engine
        .store
        .outbox_entries()
        .filter_map(Result::ok)
        .filter(|e| e.is_send() && e.message_id.is_some())
        .filter_map(|e| sent_at(&e).map(|t| (t, e)))
        .collect();
    sent.sort_by_key(|(t, _)| *t);
    sent
}

/// Starts each script's countdown at the first message its patient received.
fn plan_scripts(sent: &[(DateTime<Utc>, OutboxEntry)], scripts: &mut [Script]) {
    for script in scripts.iter_mut().filter(|s| s.due.is_none()) {
        let first = sent.iter().find(|(_, e)| match &script.who {
            Who::Appointment(id) => e.appointment_id.as_deref() == Some(id.as_str()),
            Who::Mobile(m) => e.mobile.as_deref() == Some(m.as_str()),
        });
        if let Some((at, e)) = first {
            script.due = Some((
                *at + script.after,
                e.mobile.clone().unwrap_or_default(),
                e.custom_field.clone().unwrap_or_default(),
            ));
        }
    }
}

/// The next moment something can happen after `now`.
fn next_event(
    engine: &Engine,
    now: DateTime<Utc>,
    scripts: &[Script],
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let mut candidates = vec![engine.store.next_due()?, engine.store.next_outbox_due()?];
    for rule in engine.rules().rules.iter().filter(|r| r.enabled) {
        if let Trigger::Cron(cron) = &rule.trigger {
            candidates.push(cron.next_after(now, rule.timezone));
        }
    }
    candidates.extend(
        scripts
            .iter()
            .filter(|s| !s.done)
            .map(|s| s.due.as_ref().map(|(t, _, _)| *t)),
    );
    Ok(candidates.into_iter().flatten().filter(|t| *t > now).min())
}

/// When the provider accepted the entry.
fn sent_at(e: &OutboxEntry) -> Option<DateTime<Utc>> {
    e.timeline
        .iter()
        .find(|c| c.status == MessageStatus::Sent)
        .map(|c| c.at)
}

/// Why a send went later than it was queued, if it did: quiet hours, or a retry's reason.
fn waited_note(engine: &Engine, e: &OutboxEntry, tz: Tz) -> String {
    let Some(sent) = sent_at(e) else {
        return String::new();
    };
    if sent - e.created_at < ChronoDuration::minutes(1) {
        return String::new();
    }
    let quiet = engine
        .config
        .quiet_hours
        .is_some_and(|q| q.contains(e.created_at.with_timezone(&tz).time()));
    let why = e
        .timeline
        .iter()
        .skip(1)
        .filter(|c| c.status == MessageStatus::Queued)
        .find_map(|c| c.reason.clone())
        .or_else(|| quiet.then(|| "held by quiet hours".to_string()))
        .map(|r| format!("; {r}"))
        .unwrap_or_default();
    format!(" (queued at {}{why})", local(e.created_at, tz))
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
}

/// One line of the timeline, and the text under it.
struct Event {
    at: DateTime<Utc>,
    /// Among events at the same instant: cron, sends, replies, what replies caused.
    rank: u8,
    line: String,
    text: Option<String>,
}

#[derive(Default)]
struct Timeline {
    events: Vec<Event>,
    sent: usize,
    skipped: usize,
    refused: usize,
    replies: usize,
    notified: usize,
}

impl Timeline {
    fn collect(
        engine: &Engine,
        appointments: &[Appointment],
        before: &HashSet<String>,
        tz: Tz,
    ) -> anyhow::Result<Timeline> {
        let mut t = Timeline::default();
        let whom = |appointment: Option<&str>, mobile: Option<&str>| {
            let mobile = mobile
                .map(str::to_string)
                .or_else(|| {
                    appointment.and_then(|id| {
                        appointments
                            .iter()
                            .find(|a| a.id == id)
                            .map(|a| a.mobile.clone())
                    })
                })
                .map(|m| mask(&m))
                .unwrap_or_else(|| "?".into());
            match appointment {
                Some(id) => format!("{mobile} (cita {id})"),
                None => mobile,
            }
        };
        for entry in engine.store.outbox_entries() {
            let e = entry?;
            let from_reply = e.key.starts_with("reply:");
            let rank = if from_reply { 3 } else { 1 };
            let who = whom(e.appointment_id.as_deref(), e.mobile.as_deref());
            let last = e.timeline.last().map(|c| c.at).unwrap_or(e.updated_at);
            let waited = waited_note(engine, &e, tz);
            match (&e.kind, e.status) {
                (
                    OutboxKind::Send,
                    MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read,
                ) => {
                    t.sent += 1;
                    t.events.push(Event {
                        at: sent_at(&e).unwrap_or(last),
                        rank,
                        line: format!(
                            "{} → {who}: template {}{waited}",
                            e.rule,
                            e.template_id.map(|i| i.to_string()).unwrap_or_default()
                        ),
                        text: e.text.clone(),
                    });
                }
                (OutboxKind::Send, MessageStatus::Skipped) => {
                    t.skipped += 1;
                    t.events.push(Event {
                        at: last,
                        rank,
                        line: format!(
                            "{} ✗ {who}: skipped: {}",
                            e.rule,
                            e.error.as_deref().unwrap_or("no reason recorded")
                        ),
                        text: None,
                    });
                }
                (OutboxKind::Send, MessageStatus::Queued | MessageStatus::Sending) => {
                    t.events.push(Event {
                        at: e.not_before,
                        rank,
                        line: format!(
                            "{} … {who}: still queued at the end of the period; goes at {}{}",
                            e.rule,
                            local(e.not_before, tz),
                            e.timeline
                                .last()
                                .and_then(|c| c.reason.as_deref())
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        ),
                        text: None,
                    });
                }
                (OutboxKind::Send, _) => {
                    t.refused += 1;
                    t.events.push(Event {
                        at: last,
                        rank,
                        line: format!(
                            "{} ✗ {who}: refused before any call to the provider: {}",
                            e.rule,
                            e.error.as_deref().unwrap_or("no reason recorded")
                        ),
                        text: None,
                    });
                }
                (OutboxKind::Notify { endpoint }, status) => {
                    if status == MessageStatus::Sent {
                        t.notified += 1;
                    }
                    t.events.push(Event {
                        at: last,
                        rank,
                        line: format!("{} ⇒ notify `{endpoint}` about {who}: {status}", e.rule),
                        text: e.text.clone(),
                    });
                }
            }
        }
        for reply in engine.store.replies() {
            let r = reply?;
            t.replies += 1;
            let outcome = match (&r.rule, r.outcome.as_str()) {
                (Some(rule), _) => format!("→ rule {rule}"),
                (None, "unhandled") => "→ no rule matched (unhandled)".into(),
                (None, other) => format!("→ {}", other.replace('_', " ")),
            };
            let appointment = match &r.custom_field {
                Some(cf) => engine
                    .store
                    .get_conversation(cf)?
                    .and_then(|c| c.appointment_id),
                None => None,
            };
            t.events.push(Event {
                at: r.received_at,
                rank: 2,
                line: format!(
                    "← {} replied {:?} {outcome}",
                    whom(appointment.as_deref(), Some(&r.mobile)),
                    r.message
                ),
                text: None,
            });
        }
        for item in engine.store.fired_all() {
            let (key, fired) = item?;
            if before.contains(&key) {
                continue;
            }
            let mut parts = key.splitn(3, ':');
            let (kind, rule, rest) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let appointment = appointments
                .iter()
                .find(|a| rest.starts_with(&format!("{}:", a.id)))
                .map(|a| a.id.as_str());
            let outcome = &fired.outcome;
            if kind == "cron" {
                t.events.push(Event {
                    at: fired.at,
                    rank: 0,
                    line: format!("{rule} (cron) fired: {outcome}"),
                    text: None,
                });
            } else if outcome.starts_with("skipped")
                || outcome.starts_with("late-skipped")
                || outcome.starts_with("missed")
            {
                t.skipped += 1;
                t.events.push(Event {
                    at: fired.at,
                    rank: 1,
                    line: format!("{rule} ✗ {}: {outcome}", whom(appointment, None)),
                    text: None,
                });
            }
        }
        t.events.sort_by_key(|e| (e.at, e.rank));
        Ok(t)
    }

    fn render(&self, tz: Tz) -> String {
        let mut out = String::new();
        if self.events.is_empty() {
            out.push_str("nothing happens in this period\n");
        }
        for e in &self.events {
            let _ = writeln!(out, "{}  {}", local(e.at, tz), e.line);
            if let Some(text) = &e.text {
                for line in text.lines() {
                    let _ = writeln!(out, "{:18}{line}", "");
                }
            }
        }
        out
    }
}
