//! The torture run: the real `recuerda serve` binary and the provider simulator, appointments
//! booked, patients replying, callbacks duplicated, reordered and delayed, provider faults, and
//! SIGKILLs at random moments; at the end, the invariants checked against the simulator's record.

use super::engine::API_TOKEN;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) async fn wait_healthy(http: &reqwest::Client, base: &str) {
    for _ in 0..400 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the engine did not become healthy at {base}");
}

/// The real binary, its log kept in a file for the test to read.
pub(crate) struct LoggedChild {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl LoggedChild {
    pub(crate) fn spawn(config: &std::path::Path, level: &str) -> LoggedChild {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_recuerda"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RECUERDA_LOG", level)
            .env("RECUERDA_API_TOKEN", API_TOKEN)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("recuerda binary runs");
        LoggedChild { child, log }
    }

    /// SIGKILL, and wait for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- the run ---------------------------------------------------------------------------------

use super::engine::{sim_config, write_folder, LOGIN, RULES, TOKEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recuerda::message::{MessageStatus, OutboxKind};
use recuerda::simulator::{DeliveryEvent, Fault, SimHandle, Simulator};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

const BALANCE: u64 = 10_000_000;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One booked appointment and what its patient said.
struct Patient {
    id: String,
    mobile: String,
    custom_field: String,
    /// `'1'` (confirm) or `'2'` (cancel), once said.
    decision: Option<char>,
    /// Every distinct reply text injected for this conversation.
    said: Vec<String>,
}

impl Patient {
    fn expected_state(&self) -> &'static str {
        match self.decision {
            Some('1') => "confirmada",
            Some('2') => "cancelada",
            _ => "esperando",
        }
    }

    fn expected_status(&self) -> &'static str {
        match self.decision {
            Some('1') => "confirmed",
            Some('2') => "cancelled",
            _ => "scheduled",
        }
    }
}

/// The rule a reply text must have been handled by.
fn expected_rule(text: &str) -> &'static str {
    if text.starts_with("1 ") {
        "confirma"
    } else if text.starts_with("2 ") {
        "cancela"
    } else {
        "ayuda"
    }
}

/// Replies the webhook has acknowledged (2xx), and those still owed a delivery.
#[derive(Default)]
struct Replies {
    acknowledged: BTreeSet<String>,
    /// text → (mobile, custom_field) for replies no attempt of which was acknowledged.
    unacknowledged: BTreeMap<String, (String, String)>,
}

async fn inject_reply(
    sim: SimHandle,
    replies: Arc<Mutex<Replies>>,
    mobile: String,
    text: String,
    custom_field: String,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let delivered = sim
        .reply(&mobile, &text, &custom_field)
        .await
        .map(|r| r.delivered())
        .unwrap_or(false);
    let mut r = replies.lock().unwrap();
    if delivered {
        r.unacknowledged.remove(&text);
        r.acknowledged.insert(text);
    } else if !r.acknowledged.contains(&text) {
        r.unacknowledged.insert(text, (mobile, custom_field));
    }
}

async fn book(http: &reqwest::Client, base: &str, p: &Patient, deadline: tokio::time::Instant) {
    // Retried until acknowledged: the engine may be down (killed) or busy restarting.
    loop {
        let r = http
            .put(format!("{base}/api/v1/appointments/{}", p.id))
            .bearer_auth(API_TOKEN)
            .timeout(Duration::from_secs(5))
            .json(&json!({"mobile": p.mobile, "start": "2031-01-15T10:00:00-05:00", "paciente": "Ana María Torres"}))
            .send()
            .await;
        if let Ok(r) = r {
            let s = r.status().as_u16();
            if s == 200 || s == 201 {
                return;
            }
            assert!(s >= 500, "booking {} answered {s}", p.id);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "booking {} never acknowledged",
            p.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(child: &mut LoggedChild) {
    let pid = child.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..400 {
        if matches!(child.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the engine did not stop on SIGTERM within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture() {
    let secs = env_number("RECUERDA_TORTURE_SECS", 25);
    let kills = env_number("RECUERDA_TORTURE_KILLS", 4);
    let seed = env_number(
        "RECUERDA_TORTURE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    );
    println!(
        "torture: seed {seed}, {secs} s, {kills} kills (RECUERDA_TORTURE_SEED={seed} replays the choices)"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let mut sim_cfg = sim_config();
    sim_cfg.accounts[0].balance = BALANCE;
    let sim = Simulator::start(sim_cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    write_folder(dir.path(), RULES);
    let port = free_port();
    let secret = recuerda::secret::Secret::generate(40);
    let config_path = dir.path().join("recuerda.yaml");
    std::fs::write(
        &config_path,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: data\nrules_dir: rules\ntemplates_dir: templates\n\
             provider:\n  base_url: {}\n  login: {LOGIN}\n  token: {TOKEN}\n  rate_per_second: 1000\n  concurrency: 4\n  \
             retry_base: 20ms\n  timeout: 1s\n  connect_timeout: 1s\n  balance_poll: 50ms\n  max_attempts: 8\n\
             webhook:\n  secret: {}\n",
            sim.base_url(),
            secret.expose()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    sim.set_webhook_url(Some(format!("{base}/webhook/{}", secret.expose())))
        .unwrap();
    let http = reqwest::Client::new();

    let mut child = LoggedChild::spawn(&config_path, "warn");
    wait_healthy(&http, &base).await;

    let started = tokio::time::Instant::now();
    let run_for = Duration::from_secs(secs);
    // Kill moments, spread over the run (seeded).
    let mut kill_at: Vec<Duration> = (0..kills)
        .map(|_| run_for.mul_f64(rng.random_range(0.05..0.95)))
        .collect();
    kill_at.sort();
    let mut kill_at = std::collections::VecDeque::from(kill_at);

    let replies = Arc::new(Mutex::new(Replies::default()));
    let mut tasks = JoinSet::new();
    let mut patients: Vec<Patient> = Vec::new();
    let (mut killed, mut faults, mut duplicates) = (0u64, 0u64, 0u64);
    let mut said_counter = 0u64;

    while started.elapsed() < run_for {
        if kill_at.front().is_some_and(|at| started.elapsed() >= *at) {
            kill_at.pop_front();
            child.kill();
            killed += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            child = LoggedChild::spawn(&config_path, "warn");
            wait_healthy(&http, &base).await;
        }
        // Replies no callback attempt got through are delivered again soon, as a provider
        // would: well inside the duplicate window, so a copy that did reach the store before a
        // kill is recognised as the same reply.
        while tasks.try_join_next().is_some() {}
        let owed = std::mem::take(&mut replies.lock().unwrap().unacknowledged);
        for (text, (mobile, cf)) in owed {
            tasks.spawn(inject_reply(
                sim.clone(),
                replies.clone(),
                mobile,
                text,
                cf,
                Duration::ZERO,
            ));
        }
        // Book a few appointments.
        for _ in 0..rng.random_range(0..3) {
            let n = patients.len();
            let p = Patient {
                id: format!("T{n:06}"),
                mobile: format!("5730{:08}", 10_000_000 + n),
                custom_field: format!("cita-T{n:06}"),
                decision: None,
                said: Vec::new(),
            };
            book(
                &http,
                &base,
                &p,
                started + run_for + Duration::from_secs(30),
            )
            .await;
            patients.push(p);
        }
        let sends = sim.sends();
        // Patients who got their reminder answer it: sometimes twice (the provider retrying),
        // sometimes late.
        if !sends.is_empty() && rng.random_bool(0.6) {
            let s = &sends[rng.random_range(0..sends.len())];
            if let Some(p) = patients
                .iter_mut()
                .find(|p| Some(&p.custom_field) == s.custom_field.as_ref() && p.said.len() < 4)
            {
                said_counter += 1;
                let text = match (p.decision, rng.random_range(0..3)) {
                    (None, 0) => {
                        p.decision = Some('1');
                        format!("1 sí confirmo {said_counter}")
                    }
                    (None, 1) => {
                        p.decision = Some('2');
                        format!("2 no puedo {said_counter}")
                    }
                    _ => format!("hola, ¿qué es esto? {said_counter}"),
                };
                p.said.push(text.clone());
                let times = if rng.random_bool(0.3) { 2 } else { 1 };
                duplicates += times - 1;
                for _ in 0..times {
                    let delay = Duration::from_millis(rng.random_range(0..200));
                    tasks.spawn(inject_reply(
                        sim.clone(),
                        replies.clone(),
                        p.mobile.clone(),
                        text.clone(),
                        p.custom_field.clone(),
                        delay,
                    ));
                }
            }
        }
        // Delivery callbacks again, duplicated, out of order, late.
        if !sends.is_empty() && rng.random_bool(0.4) {
            let s = &sends[rng.random_range(0..sends.len())];
            let mut events = vec![
                DeliveryEvent::Sent,
                DeliveryEvent::Delivered,
                DeliveryEvent::Read,
            ];
            for i in (1..events.len()).rev() {
                events.swap(i, rng.random_range(0..=i));
            }
            for event in events {
                duplicates += 1;
                let sim = sim.clone();
                let id = s.message_id.clone();
                let delay = Duration::from_millis(rng.random_range(0..300));
                tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sim.push_event(&id, event, None).await;
                });
            }
        }
        // Provider trouble.
        if rng.random_bool(0.08) {
            faults += 1;
            match rng.random_range(0..6) {
                0 => sim.push_fault(Fault::HttpStatus {
                    status: 500,
                    body: "Internal Server Error".into(),
                    retry_after: None,
                }),
                1 => sim.push_fault(Fault::Garbage),
                2 => sim.push_fault(Fault::Hang {
                    duration: Duration::from_millis(1500),
                    accepted: rng.random_bool(0.5),
                }),
                3 => sim.push_fault(Fault::Drop {
                    accepted: rng.random_bool(0.5),
                }),
                4 => sim.push_fault(Fault::HttpStatus {
                    status: 503,
                    body: String::new(),
                    retry_after: None,
                }),
                _ => {
                    // Code 5 on the next sends until the clinic tops up.
                    sim.set_balance(LOGIN, 0).unwrap();
                    let sim = sim.clone();
                    let outage = Duration::from_millis(rng.random_range(100..600));
                    tasks.spawn(async move {
                        tokio::time::sleep(outage).await;
                        sim.set_balance(LOGIN, BALANCE).unwrap();
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
    }

    // ---- settle: every task done, every reply acknowledged, nothing queued or in flight ----
    while tasks.join_next().await.is_some() {}
    sim.set_balance(LOGIN, BALANCE).unwrap();
    let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let owed: Vec<(String, (String, String))> = replies
            .lock()
            .unwrap()
            .unacknowledged
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (text, (mobile, cf)) in owed {
            inject_reply(
                sim.clone(),
                replies.clone(),
                mobile,
                text,
                cf,
                Duration::ZERO,
            )
            .await;
        }
        let mut why = String::new();
        let settled = async {
            let mut stuck: Vec<String> = Vec::new();
            let mut pending = 0;
            for status in ["queued", "sending"] {
                let m: serde_json::Value = crate::try_json_of(
                    http.get(format!("{base}/api/v1/messages?status={status}"))
                        .bearer_auth(API_TOKEN),
                )
                .await?;
                let list = m["messages"].as_array()?;
                pending += list.len();
                stuck.extend(list.iter().take(3).map(|m| {
                    format!(
                        "{} {} {}",
                        m["key"],
                        m["status"],
                        m["timeline"]
                            .as_array()
                            .and_then(|t| t.last())
                            .cloned()
                            .unwrap_or_default()
                    )
                }));
            }
            let r: serde_json::Value = crate::try_json_of(
                http.get(format!("{base}/api/v1/replies"))
                    .bearer_auth(API_TOKEN),
            )
            .await?;
            let seen: BTreeSet<&str> = r["replies"]
                .as_array()?
                .iter()
                .filter(|r| r["outcome"] != "duplicate" && r["outcome"] != "received")
                .filter_map(|r| r["message"].as_str())
                .collect();
            let acked = replies.lock().unwrap();
            let unseen: Vec<&String> = acked
                .acknowledged
                .iter()
                .filter(|t| !seen.contains(t.as_str()))
                .collect();
            let all_seen = unseen.is_empty();
            why = format!(
                "{pending} pending {stuck:?}; {} acknowledged replies not stored {:?}; {} owed",
                unseen.len(),
                unseen.iter().take(5).collect::<Vec<_>>(),
                acked.unacknowledged.len(),
            );
            (pending == 0 && all_seen && acked.unacknowledged.is_empty()).then_some(())
        }
        .await;
        if settled.is_some() {
            break;
        }
        if tokio::time::Instant::now() > settle_deadline {
            eprintln!("--- engine log (tail) ---\n{}", tail(&child.stderr(), 40));
            let health = match http.get(format!("{base}/healthz")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => format!("unreachable: {e}"),
            };
            panic!("torture did not settle within 90 s (seed {seed}): {why}\nhealth: {health}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A clean stop, then the store is opened here: it must read back whole.
    sigterm(&mut child);
    let log = child.stderr();
    drop(child);
    let store = recuerda::store::Store::open(&dir.path().join("data"))
        .unwrap_or_else(|e| panic!("the store does not reopen: {e}"));

    // ---- invariants against the simulator's record -------------------------------------------
    let sim_sends = sim.sends();
    let mut sim_by_id: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sim_by_conv: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for s in &sim_sends {
        *sim_by_id.entry(s.message_id.as_str()).or_default() += 1;
        *sim_by_conv
            .entry((s.custom_field.clone().unwrap_or_default(), s.template_id))
            .or_default() += 1;
    }
    let entries: Vec<_> = store
        .outbox_entries()
        .map(|e| e.expect("every outbox entry decodes"))
        .filter(|e| matches!(e.kind, OutboxKind::Send))
        .collect();
    let mut problems: Vec<String> = Vec::new();
    let (mut lost, mut doubled, mut unknown) = (0u64, 0u64, 0u64);
    // What each conversation may have received per template: sent entries, plus unknown ones
    // (which may or may not have reached the provider).
    let mut allowed: BTreeMap<(String, u32), (usize, usize)> = BTreeMap::new();
    for e in &entries {
        let key = (
            e.custom_field.clone().unwrap_or_default(),
            e.template_id.unwrap_or_default(),
        );
        let slot = allowed.entry(key).or_default();
        match e.status {
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read => {
                slot.0 += 1;
                let id = e.message_id.as_deref().unwrap_or("");
                match sim_by_id.get(id) {
                    Some(1) => {}
                    Some(n) => {
                        doubled += 1;
                        problems.push(format!("{} reached the provider {n} times", e.key));
                    }
                    None => {
                        lost += 1;
                        problems.push(format!(
                            "{} is `{}` but the provider never got {id}",
                            e.key,
                            e.status.as_str()
                        ));
                    }
                }
            }
            MessageStatus::Unknown | MessageStatus::Failed | MessageStatus::Skipped => {
                if e.status == MessageStatus::Unknown {
                    unknown += 1;
                    slot.1 += 1;
                }
                if e.error.as_deref().is_none_or(str::is_empty) {
                    problems.push(format!(
                        "{} is `{}` without a reason",
                        e.key,
                        e.status.as_str()
                    ));
                }
            }
            MessageStatus::Queued | MessageStatus::Sending => {
                lost += 1;
                problems.push(format!(
                    "{} still `{}` after settling",
                    e.key,
                    e.status.as_str()
                ));
            }
        }
    }
    for (key, got) in &sim_by_conv {
        let (sent, maybe) = allowed.get(key).copied().unwrap_or_default();
        if *got > sent + maybe {
            doubled += (*got - sent - maybe) as u64;
            problems.push(format!(
                "{} got template {} {got} times; the engine accounts for {sent} sent and {maybe} unknown",
                key.0, key.1
            ));
        }
    }
    // Every booking fired its confirmation exactly once.
    let mut confirmations: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.rule == "confirmacion-reserva") {
        *confirmations
            .entry(e.custom_field.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    for p in &patients {
        match confirmations.get(p.custom_field.as_str()) {
            Some(1) => {}
            Some(n) => {
                doubled += 1;
                problems.push(format!("{} has {n} confirmation entries", p.id));
            }
            None => {
                lost += 1;
                problems.push(format!(
                    "{} was booked but its confirmation never fired",
                    p.id
                ));
            }
        }
    }
    // Replies: each distinct one stored and handled once, by the rule its text calls for, and
    // its answer queued once.
    let stored: Vec<_> = store
        .replies()
        .map(|r| r.expect("every reply decodes"))
        .collect();
    let mut by_text: BTreeMap<&str, Vec<&recuerda::conversation::Reply>> = BTreeMap::new();
    for r in &stored {
        if r.outcome != "duplicate" {
            by_text.entry(r.message.as_str()).or_default().push(r);
        }
    }
    let acknowledged = replies.lock().unwrap().acknowledged.clone();
    for text in &acknowledged {
        match by_text.get(text.as_str()).map(Vec::as_slice) {
            None | Some([]) => {
                lost += 1;
                problems.push(format!("reply `{text}` was acknowledged but is not stored"));
            }
            Some([r]) => {
                if r.outcome != "handled" || r.rule.as_deref() != Some(expected_rule(text)) {
                    problems.push(format!(
                        "reply `{text}` ended `{}` by {:?}, expected handled by `{}`",
                        r.outcome,
                        r.rule,
                        expected_rule(text)
                    ));
                }
                let prefix = format!(
                    "{}#",
                    recuerda::store::reply_occasion(&r.id, expected_rule(text))
                );
                let answers = entries
                    .iter()
                    .filter(|e| e.key.starts_with(&prefix))
                    .count();
                if answers != 1 {
                    if answers == 0 {
                        lost += 1;
                    } else {
                        doubled += 1;
                    }
                    problems.push(format!("reply `{text}` has {answers} answers queued"));
                }
            }
            Some(many) => {
                doubled += 1;
                problems.push(format!("reply `{text}` was handled {} times", many.len()));
            }
        }
    }
    // Each conversation is where its replies lead.
    for p in &patients {
        let state = store
            .get_conversation(&p.custom_field)
            .expect("conversation decodes")
            .and_then(|c| c.state);
        if state.as_deref() != Some(p.expected_state()) {
            problems.push(format!(
                "{} is in state {state:?}, its replies {:?} lead to `{}`",
                p.custom_field,
                p.said,
                p.expected_state()
            ));
        }
        let status = store
            .get_appointment(&p.id)
            .expect("appointment decodes")
            .map(|a| serde_json::to_value(a.status).unwrap_or_default());
        if status.as_ref().and_then(|s| s.as_str()) != Some(p.expected_status()) {
            problems.push(format!(
                "appointment {} is {status:?}, expected `{}`",
                p.id,
                p.expected_status()
            ));
        }
    }
    let dead = store.dead_letters().expect("dead letters decode");
    if !dead.is_empty() {
        problems.push(format!("{} dead letters: {:?}", dead.len(), dead.first()));
    }
    for item in store.fired_all() {
        item.expect("every occasion record decodes");
    }
    // Late delivery callbacks may wait in the inbox for the next start: they must read back.
    store.inbox(usize::MAX).expect("the inbox decodes");
    drop(store);
    sim.shutdown().await;

    println!(
        "torture: sends {}, kills {killed}, provider faults {faults}, duplicates {duplicates}, lost {lost}, doubled {doubled}, unknown {unknown}",
        sim_sends.len()
    );
    println!(
        "torture: {} appointments, {} distinct replies, {} outbox sends, seed {seed}",
        patients.len(),
        acknowledged.len(),
        entries.len()
    );
    if !problems.is_empty() {
        eprintln!("--- engine log (tail) ---\n{}", tail(&log, 40));
    }
    assert!(
        problems.is_empty() && lost == 0 && doubled == 0,
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
