//! The load benchmark behind `recuerda bench`: starts `recuerda serve` as a child process on a
//! fresh store, a lean provider sink in this process, drives the scenarios of issue 8 over
//! keep-alive HTTP and reports throughput, latency, the server's CPU per event (from the OS)
//! and its memory, against the targets.
//!
//! Scenarios: (a) delivery callbacks, (b) replies → rule → send, (c) a cron fan-out, (d) idle
//! memory and start-up, (e) reply matching cost by number of rules (in process).

pub mod fixtures;
pub mod load;
pub mod server;
pub mod sink;

use fixtures::{appointment_json, load_rules_yaml, mobile, CRON_RULE, REPLY_TEXT};
use load::{rate, LoadResult};
use serde_json::{json, Value};
use server::{Server, ServerSpec, API_TOKEN};
use sink::Sink;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{message}; the server's log ends with:\n{log}")]
    Server { message: String, log: String },
    #[error(transparent)]
    Fixture(#[from] fixtures::FixtureError),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Delivery-status callbacks ingested.
    A,
    /// Replies → rule match → render → outbox → send.
    B,
    /// A cron fan-out over many appointments, then dispatch.
    C,
    /// Idle memory and start-up time with 200 rules.
    D,
    /// Reply matching cost with 1, 100 and 1,000 reply rules.
    E,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::A,
        Scenario::B,
        Scenario::C,
        Scenario::D,
        Scenario::E,
    ];

    pub fn letter(self) -> char {
        match self {
            Scenario::A => 'a',
            Scenario::B => 'b',
            Scenario::C => 'c',
            Scenario::D => 'd',
            Scenario::E => 'e',
        }
    }
}

/// What to run, and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    /// Load time of (a) and (b); bounds the waits of the others.
    pub duration: Duration,
    pub connections: usize,
    /// Appointments in (c)'s fan-out.
    pub appointments: u64,
    /// The server's `provider.concurrency` (sends in flight).
    pub provider_concurrency: usize,
    /// The server's `provider.rate_per_second`.
    pub provider_rate: u32,
    /// `RECUERDA_LOG` of the server.
    pub server_log: String,
    /// Rounds of the chosen scenarios; with more than one, the summary takes each figure's
    /// median (a shared VM's noise is larger than many of the effects worth measuring).
    pub repeat: usize,
}

/// One figure against its target.
#[derive(Debug, Clone)]
pub struct Check {
    pub scenario: Scenario,
    pub what: String,
    /// The number behind `measured`, to take the median of repeated runs.
    pub value: f64,
    pub measured: String,
    pub target: String,
    pub met: bool,
}

fn check(
    scenario: Scenario,
    what: &str,
    value: f64,
    measured: String,
    target: impl Into<String>,
    met: bool,
) -> Check {
    Check {
        scenario,
        what: what.into(),
        value,
        measured,
        target: target.into(),
        met,
    }
}

/// CPU time per event against its ceiling.
fn micros_check(scenario: Scenario, what: &str, us: f64, max_us: f64) -> Check {
    let (measured, target) = (format!("{us:.1} µs"), format!("≤ {max_us:.0} µs"));
    check(scenario, what, us, measured, target, us <= max_us)
}

/// A rate against its floor.
fn rate_check(scenario: Scenario, what: &str, per_second: f64, min: u64) -> Check {
    let measured = format!("{per_second:.0}/s");
    let target = format!("≥ {}/s", thousands(min));
    check(
        scenario,
        what,
        per_second,
        measured,
        target,
        per_second >= min as f64,
    )
}

/// Errors: none is the target.
fn errors_check(scenario: Scenario, errors: u64) -> Check {
    check(
        scenario,
        "errors",
        errors as f64,
        thousands(errors),
        "0",
        errors == 0,
    )
}

/// Runs the chosen scenarios, printing each as it ends; returns every check.
pub async fn run(
    options: &Options,
    out: &mut impl std::io::Write,
) -> Result<Vec<Check>, BenchError> {
    let checks;
    let _ = writeln!(
        out,
        "recuerda bench: {} CPUs, {} connections, {:?} of load per scenario, server `recuerda serve` (log level {}), provider = in-process sink (concurrency {}, {}/s)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        options.connections,
        options.duration,
        options.server_log,
        options.provider_concurrency,
        options.provider_rate,
    );
    let rounds = options.repeat.max(1);
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            let _ = writeln!(out, "\n== round {round} of {rounds}");
        }
        let mut found_in_round = Vec::new();
        for scenario in &options.scenarios {
            let mut text = String::new();
            let found = match scenario {
                Scenario::A => status_callbacks(options, &mut text).await?,
                Scenario::B => replies(options, &mut text).await?,
                Scenario::C => fan_out(options, &mut text).await?,
                Scenario::D => start_up(options, &mut text).await?,
                Scenario::E => matching(options, &mut text)?,
            };
            let _ = write!(out, "\n{text}");
            let _ = out.flush();
            found_in_round.extend(found);
        }
        per_round.push(found_in_round);
    }
    if rounds == 1 {
        checks = per_round.pop().unwrap_or_default();
        let _ = writeln!(out, "\n{}", summary(&checks));
    } else {
        checks = medians(&per_round);
        let _ = writeln!(out, "\n{}", summary_of_rounds(&checks, &per_round));
    }
    Ok(checks)
}

/// Each figure's median over the rounds (the lower middle one for an even count), with the
/// verdict of that run.
fn medians(rounds: &[Vec<Check>]) -> Vec<Check> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c| {
            let mut same = same_figure(rounds, c);
            same.sort_by(|a, b| a.value.total_cmp(&b.value));
            same[(same.len() - 1) / 2].clone()
        })
        .collect()
}

/// The summary of repeated rounds: each figure's median, then every round's figure.
fn summary_of_rounds(medians: &[Check], rounds: &[Vec<Check>]) -> String {
    let mut out = format!(
        "summary (targets of issue 8), median of {} rounds, then each round\n",
        rounds.len()
    );
    for c in medians {
        let all: Vec<&str> = same_figure(rounds, c)
            .iter()
            .map(|o| o.measured.trim())
            .collect();
        let _ = writeln!(out, "{:<100} ({})", line(c), all.join(", "));
    }
    out
}

/// The same figure as `c` in each round.
fn same_figure<'a>(rounds: &'a [Vec<Check>], c: &Check) -> Vec<&'a Check> {
    rounds
        .iter()
        .filter_map(|r| {
            r.iter()
                .find(|o| o.scenario == c.scenario && o.what == c.what)
        })
        .collect()
}

/// One figure against its target, as the summaries print it.
fn line(c: &Check) -> String {
    format!(
        "  ({}) {:<34} {:>14}   target {:<12} {}",
        c.scenario.letter(),
        c.what,
        c.measured,
        c.target,
        if c.met { "met" } else { "MISSED" }
    )
}

/// The table of every figure against its target.
pub fn summary(checks: &[Check]) -> String {
    let mut out = String::from("summary (targets of issue 8)\n");
    for c in checks {
        let _ = writeln!(out, "{}", line(c));
    }
    out
}

// ---- helpers -------------------------------------------------------------------------------

fn spec<'a>(options: &'a Options, base_url: &'a str, rules: &'a str) -> ServerSpec<'a> {
    ServerSpec {
        rules_yaml: rules,
        provider_base_url: base_url,
        rate_per_second: options.provider_rate,
        concurrency: options.provider_concurrency,
        log_level: &options.server_log,
    }
}

async fn start_sink() -> Result<Sink, BenchError> {
    Sink::start().await.map_err(|source| BenchError::Io {
        what: "start the provider sink on loopback".into(),
        source,
    })
}

/// A patient's reply in conversation `bench-<tag><k>`, from a mobile of its own.
fn reply_body(k: u64, tag: &str, text: &str) -> Vec<u8> {
    crate::simulator::reply_payload(&mobile(k), text, &format!("bench-{tag}{k}"))
        .to_string()
        .into_bytes()
}

/// CPU seconds this benchmark process has used (load generator and sink).
fn own_cpu_seconds() -> f64 {
    server::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn per_event_us(cpu_seconds: f64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        cpu_seconds * 1e6 / events as f64
    }
}

/// Polls `sink` until it has seen `n` sends or `timeout` passes; returns whether it did.
/// Waits (at most 5 s) until the server is idle: under 2 ms of CPU in 100 ms.
async fn settle(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut before = server.cpu_seconds();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.cpu_seconds();
        if now - before < 0.002 {
            return;
        }
        before = now;
    }
}

async fn wait_for_sends(sink: &Sink, n: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while sink.sends() < n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Polls a `/metrics` counter until it reaches `n` or `timeout` passes; returns its last value.
async fn wait_for_metric(
    server: &Server,
    http: &reqwest::Client,
    name: &str,
    n: u64,
    timeout: Duration,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = server.metric(http, name).await.unwrap_or(0);
        if value >= n || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SENT_METRIC: &str = "recuerda_sends_result_total{result=\"sent\"}";

/// How well the store grouped its flushes since the server started (group commit at work).
async fn flush_line(server: &Server, http: &reqwest::Client) -> String {
    let flushes = server
        .metric(http, "recuerda_store_flushes_total")
        .await
        .unwrap_or(0);
    let waits = server
        .metric(http, "recuerda_store_flushed_waits_total")
        .await
        .unwrap_or(0);
    format!(
        "  store flushes              {} for {} waits since start ({:.1} per flush)\n",
        thousands(flushes),
        thousands(waits),
        waits as f64 / flushes.max(1) as f64
    )
}

/// The server's store operations so far (`recuerda_store_operations_total`): (tree, kind) →
/// count; and under [`DISK`] the bytes it has written to storage.
type StoreOps = std::collections::BTreeMap<(String, String), u64>;

const DISK: (&str, &str) = ("", "disk bytes");

async fn store_ops(server: &Server, http: &reqwest::Client) -> StoreOps {
    const NAME: &str = "recuerda_store_operations_total{tree=\"";
    let text = server.metrics_text(http).await.unwrap_or_default();
    let mut ops: StoreOps = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(NAME)?;
            let (tree, rest) = rest.split_once("\",op=\"")?;
            let (op, n) = rest.split_once("\"} ")?;
            Some(((tree.to_string(), op.to_string()), n.trim().parse().ok()?))
        })
        .collect();
    ops.insert((DISK.0.into(), DISK.1.into()), server.written_bytes());
    ops
}

/// What the store did per event between two snapshots: totals by kind, then by tree (the
/// busiest first). Unlike CPU time, these counts do not drift with the machine's speed.
fn ops_line(before: &StoreOps, after: &StoreOps, events: u64, per: &str) -> String {
    let n = events.max(1) as f64;
    let delta = |k: &(String, String)| {
        let was = before.get(k).copied().unwrap_or(0);
        after.get(k).copied().unwrap_or(0).saturating_sub(was)
    };
    let kinds = ["write", "remove", "read", "scan"];
    let letters = ["w", "d", "r", "s"];
    let mut by_kind = [0u64; 4];
    let mut by_tree: std::collections::BTreeMap<&str, [u64; 4]> = Default::default();
    for k in after.keys() {
        let d = delta(k);
        if let Some(i) = kinds.iter().position(|x| *x == k.1) {
            by_kind[i] += d;
            by_tree.entry(k.0.as_str()).or_default()[i] += d;
        }
    }
    let total: u64 = by_kind.iter().sum();
    let mut line = format!(
        "  store operations           {:.1} per {per}: {}\n",
        total as f64 / n,
        kinds
            .iter()
            .zip(by_kind)
            .map(|(k, d)| format!("{:.1} {k}s", d as f64 / n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut trees: Vec<_> = by_tree
        .into_iter()
        .filter(|(_, d)| d.iter().sum::<u64>() as f64 / n >= 0.05)
        .collect();
    trees.sort_by_key(|(_, d)| std::cmp::Reverse(d.iter().sum::<u64>()));
    let parts: Vec<String> = trees
        .iter()
        .map(|(tree, d)| {
            let each: Vec<String> = letters
                .iter()
                .zip(d)
                .filter(|(_, d)| **d > 0)
                .map(|(l, d)| {
                    // Two decimals for what is done once per many events (a journal record
                    // per flush), rather than a name with no figure.
                    let each = *d as f64 / n;
                    if each < 0.1 {
                        format!("{each:.2}{l}")
                    } else {
                        format!("{each:.1}{l}")
                    }
                })
                .collect();
            format!("{tree} {}", each.join(" "))
        })
        .collect();
    line.push_str(&format!(
        "    by tree (w write, d remove, r read, s scan)   {}\n",
        parts.join(" · ")
    ));
    let disk = delta(&(DISK.0.into(), DISK.1.into()));
    if disk > 0 {
        // sled rewrites a leaf every 10 changes to it and cleans its log by rewriting what is
        // live: the bytes per event say more about the store's cost than the records' size.
        line.push_str(&format!(
            "  written to disk            {:.1} KiB per {per} (the store's log and its cleaning, the server's log)\n",
            disk as f64 / n / 1024.0
        ));
    }
    line
}

/// Samples the server's resident memory every 20 ms; the highest seen, in KiB.
struct RssSampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = server::status_kib(pid, "VmRSS") {
                    m.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler { max, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max.load(Ordering::Relaxed)
    }
}

fn load_line(label: &str, r: &LoadResult) -> String {
    format!(
        "  {label:<26} {} in {:.2} s = {:.0}/s   p50 {}  p99 {}   errors {}{}{}\n",
        thousands(r.ok),
        r.elapsed.as_secs_f64(),
        r.per_second(),
        ms(r.quantile(0.50)),
        ms(r.quantile(0.99)),
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        if r.exhausted {
            " (ran out of events before the deadline)"
        } else {
            ""
        },
    )
}

// ---- (a) delivery-status callbacks ---------------------------------------------------------

async fn status_callbacks(o: &Options, out: &mut String) -> Result<Vec<Check>, BenchError> {
    let _ = writeln!(out, "(a) delivery-status callbacks (sent, delivered, read for known messages) → webhook → message status");
    let sink = start_sink().await?;
    let http = load::client(o.connections);
    let rules = load_rules_yaml(0);
    let base = sink.base_url();
    let server = Server::start("a", &spec(o, &base, &rules), &http).await?;

    // Known message ids: each primed reply ends in one send, whose id the sink hands out.
    // Three callbacks each; enough for ~60,000 callbacks a second over the whole duration
    // (14,000 a second ran out before the deadline once entries were stored compact).
    let prime = ((o.duration.as_secs_f64() * 20_000.0) as u64).clamp(100, 400_000);
    sink.keep_ids(true);
    let primed = load::run(
        &server.webhook_url,
        o.connections,
        Duration::from_secs(300),
        &[],
        move |k| (k < prime).then(|| reply_body(k, "p", REPLY_TEXT)),
    )
    .await;
    let arrived = wait_for_sends(&sink, primed.ok, Duration::from_secs(300)).await;
    wait_for_metric(
        &server,
        &http,
        SENT_METRIC,
        primed.ok,
        Duration::from_secs(30),
    )
    .await;
    sink.keep_ids(false);
    let ids = Arc::new(sink.take_ids());
    let _ = writeln!(
        out,
        "  primed {} messages through replies{}",
        thousands(ids.len() as u64),
        if arrived {
            ""
        } else {
            " (not all sends arrived in time)"
        }
    );

    // The priming's own tail (its last flushes, sled's log cleaning) is not the callbacks' cost.
    settle(&server).await;
    let ops0 = store_ops(&server, &http).await;
    let cpu0 = server.cpu_seconds();
    let events_ids = ids.clone();
    let r = load::run(
        &server.webhook_url,
        o.connections,
        o.duration,
        &[],
        move |k| {
            use crate::simulator::DeliveryEvent;
            let id = events_ids.get((k / 3) as usize)?;
            let event = [
                DeliveryEvent::Sent,
                DeliveryEvent::Delivered,
                DeliveryEvent::Read,
            ][(k % 3) as usize];
            let body = crate::simulator::event_payload(
                event,
                id,
                &format!("wamid.bench{k}"),
                None,
                chrono::Utc::now(),
            );
            Some(body.to_string().into_bytes())
        },
    )
    .await;
    let acked_at = Instant::now();
    let processed = wait_for_metric(
        &server,
        &http,
        "recuerda_status_events_total",
        r.ok,
        Duration::from_secs(120).max(o.duration * 6),
    )
    .await;
    let lag = acked_at.elapsed();
    let cpu = server.cpu_seconds() - cpu0;
    let us = per_event_us(cpu, r.ok);
    let peak = server.peak_rss_kib();
    let _ = write!(out, "{}", load_line("callbacks acknowledged", &r));
    let _ = writeln!(
        out,
        "  processed                  {} of {} ({} after the last acknowledgement)",
        thousands(processed),
        thousands(r.ok),
        ms(lag)
    );
    let _ = writeln!(
        out,
        "  server CPU                 {us:.1} µs per callback ({cpu:.2} s, intake and processing)   peak RSS {}   warnings logged {}",
        mib(peak),
        server.logged_problems()
    );
    let ops = store_ops(&server, &http).await;
    out.push_str(&ops_line(&ops0, &ops, processed, "callback"));
    out.push_str(&flush_line(&server, &http).await);
    server.stop().await;
    Ok(vec![
        micros_check(Scenario::A, "CPU per callback", us, 40.0),
        rate_check(Scenario::A, "callbacks per second", r.per_second(), 25_000),
        errors_check(Scenario::A, r.errors + (r.ok - processed.min(r.ok))),
    ])
}

// ---- (b) replies end to end ----------------------------------------------------------------

async fn replies(o: &Options, out: &mut String) -> Result<Vec<Check>, BenchError> {
    let _ = writeln!(
        out,
        "(b) replies → reply rule → render → outbox → send to the provider"
    );
    let sink = start_sink().await?;
    let http = load::client(o.connections);
    let rules = load_rules_yaml(0);
    let base = sink.base_url();
    let server = Server::start("b", &spec(o, &base, &rules), &http).await?;
    let ops0 = store_ops(&server, &http).await;
    let cpu0 = server.cpu_seconds();
    let own0 = own_cpu_seconds();
    let started = Instant::now();
    let r = load::run(&server.webhook_url, o.connections, o.duration, &[], |k| {
        Some(reply_body(k, "", REPLY_TEXT))
    })
    .await;
    let complete = wait_for_sends(&sink, r.ok, Duration::from_secs(120).max(o.duration * 6)).await;
    let sent = wait_for_metric(&server, &http, SENT_METRIC, r.ok, Duration::from_secs(10)).await;
    let cpu = server.cpu_seconds() - cpu0;
    let own = own_cpu_seconds() - own0;
    let sends = sink.sends();
    let span = sink
        .last_send_at()
        .map(|t| t.saturating_duration_since(started))
        .unwrap_or_default();
    let e2e = rate(sends, span);
    let us = per_event_us(cpu, r.ok);
    let p99 = r.quantile(0.99);
    let _ = write!(out, "{}", load_line("replies acknowledged", &r));
    let _ = writeln!(
        out,
        "  sends reached the provider {} of {} in {:.2} s = {e2e:.0}/s end to end (recorded sent: {}){}",
        thousands(sends),
        thousands(r.ok),
        span.as_secs_f64(),
        thousands(sent),
        if complete { "" } else { " (timed out waiting)" }
    );
    let _ = writeln!(
        out,
        "  server CPU                 {us:.1} µs per reply, send included ({cpu:.2} s)   peak RSS {}   warnings logged {}",
        mib(server.peak_rss_kib()),
        server.logged_problems()
    );
    // The two cores are shared: what the benchmark itself spends bounds the replies/s the
    // server can be shown to take.
    let _ = writeln!(
        out,
        "  benchmark's own CPU        {:.1} µs per reply (load generator and provider sink, same cores)",
        per_event_us(own, r.ok)
    );
    let ops = store_ops(&server, &http).await;
    out.push_str(&ops_line(&ops0, &ops, r.ok, "reply, send included"));
    out.push_str(&flush_line(&server, &http).await);
    server.stop().await;
    let missing = r.ok.saturating_sub(sends) + sink.malformed();
    Ok(vec![
        micros_check(Scenario::B, "CPU per reply (end to end)", us, 70.0),
        rate_check(Scenario::B, "replies per second", r.per_second(), 15_000),
        rate_check(Scenario::B, "sends per second (end to end)", e2e, 15_000),
        check(
            Scenario::B,
            "reply p99 latency",
            p99.as_secs_f64(),
            ms(p99),
            "≤ 15 ms",
            p99 <= Duration::from_millis(15),
        ),
        errors_check(Scenario::B, r.errors + missing),
    ])
}

// ---- (c) cron fan-out ----------------------------------------------------------------------

/// Appointment starts spread over tomorrow 07:00–19:00, clinic time (what `starts: tomorrow`
/// selects).
fn tomorrow_starts(n: u64) -> impl Fn(u64) -> String {
    let tz = chrono_tz::America::Bogota;
    let today = chrono::Utc::now().with_timezone(&tz).date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    let seven = tomorrow
        .and_hms_opt(7, 0, 0)
        .and_then(|t| t.and_local_timezone(tz).earliest());
    let spread = (12 * 3600).min(n.max(1));
    move |i| match seven {
        Some(t) => (t + chrono::Duration::seconds((i % spread) as i64)).to_rfc3339(),
        None => chrono::Utc::now().to_rfc3339(),
    }
}

async fn fan_out(o: &Options, out: &mut String) -> Result<Vec<Check>, BenchError> {
    let n = o.appointments;
    let _ = writeln!(
        out,
        "(c) cron fan-out over {} appointments → rendered and durably queued → dispatched",
        thousands(n)
    );
    let sink = start_sink().await?;
    let http = load::client(o.connections);
    let rules = load_rules_yaml(0);
    let base = sink.base_url();
    let server = Server::start("c", &spec(o, &base, &rules), &http).await?;

    const BATCH: u64 = 1000;
    let batches = n.div_ceil(BATCH);
    let start_of = tomorrow_starts(n);
    let loading = load::run(
        &format!("{}/api/v1/appointments/batch", server.base_url),
        2,
        Duration::from_secs(600),
        &[("authorization", format!("Bearer {API_TOKEN}"))],
        move |k| {
            (k < batches).then(|| {
                let rows: Vec<Value> = (k * BATCH..((k + 1) * BATCH).min(n))
                    .map(|i| appointment_json(i, &start_of(i)))
                    .collect();
                json!({ "appointments": rows }).to_string().into_bytes()
            })
        },
    )
    .await;
    if loading.errors > 0 {
        return Err(BenchError::Failed(format!(
            "loading appointments failed: {}",
            loading.first_error.unwrap_or_default()
        )));
    }
    let _ = writeln!(
        out,
        "  loaded                     {} appointments in {:.2} s = {:.0}/s (batch API, {} per request)   RSS {}",
        thousands(n),
        loading.elapsed.as_secs_f64(),
        rate(n, loading.elapsed),
        BATCH,
        mib(server.rss_kib()),
    );

    let rss_before = server.rss_kib();
    let sampler = RssSampler::start(server.pid);
    let ops0 = store_ops(&server, &http).await;
    let cpu0 = server.cpu_seconds();
    let started = Instant::now();
    let answer = http
        .post(format!("{}/api/v1/rules/{CRON_RULE}/run", server.base_url))
        .bearer_auth(API_TOKEN)
        .timeout(Duration::from_secs(1800))
        .send()
        .await
        .map_err(|e| BenchError::Failed(format!("firing `{CRON_RULE}` failed: {e}")))?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    let fan_out = started.elapsed();
    let cpu_fan = server.cpu_seconds() - cpu0;
    let sent_during = sink.sends();
    if !status.is_success() {
        return Err(BenchError::Failed(format!(
            "firing `{CRON_RULE}` answered HTTP {status}: {body}"
        )));
    }
    let queued = body.get("occasions").and_then(Value::as_u64).unwrap_or(0);
    let window = Duration::from_secs(60).max(o.duration * 6);
    let complete = wait_for_sends(&sink, queued, window).await;
    let dispatched_at = sink.last_send_at().unwrap_or_else(Instant::now);
    let sends = sink.sends();
    let cpu_total = server.cpu_seconds() - cpu0;
    let peak_sampled = sampler.finish().await;
    let dispatch_span = dispatched_at.saturating_duration_since(started + fan_out);
    let dispatch_rate = rate(sends.saturating_sub(sent_during), dispatch_span);
    let overall = rate(sends, dispatched_at.saturating_duration_since(started));
    let _ = writeln!(
        out,
        "  fan-out                    {} occasions rendered and durably queued in {:.2} s = {:.0}/s   CPU {:.1} µs each   ({} already sent meanwhile)",
        thousands(queued),
        fan_out.as_secs_f64(),
        rate(queued, fan_out),
        per_event_us(cpu_fan, queued),
        thousands(sent_during),
    );
    let _ = writeln!(
        out,
        "  dispatch                   {} of {} sent; after the fan-out {dispatch_rate:.0}/s, from the firing {overall:.0}/s{}",
        thousands(sends),
        thousands(queued),
        if complete { String::new() } else { format!(" (stopped waiting after {window:?})") }
    );
    let _ = writeln!(
        out,
        "  server CPU                 {:.1} µs per reminder, fan-out and send ({cpu_total:.2} s)   RSS before {}, peak during {}, VmHWM {}   warnings logged {}",
        per_event_us(cpu_total, sends.max(1)),
        mib(rss_before),
        mib(peak_sampled),
        mib(server.peak_rss_kib()),
        server.logged_problems()
    );
    let ops = store_ops(&server, &http).await;
    out.push_str(&ops_line(&ops0, &ops, sends, "reminder, fan-out and send"));
    out.push_str(&flush_line(&server, &http).await);
    server.stop().await;
    // Sends still queued when the wait ended are slowness (the dispatch rate shows it), not errors.
    let errors = queued.abs_diff(n) + sink.malformed();
    Ok(vec![
        check(
            Scenario::C,
            "fan-out rendered + queued",
            fan_out.as_secs_f64(),
            format!("{:.2} s", fan_out.as_secs_f64()),
            "≤ 5 s",
            fan_out <= Duration::from_secs(5),
        ),
        rate_check(Scenario::C, "dispatch rate", dispatch_rate, 10_000),
        check(
            Scenario::C,
            "RSS during fan-out",
            peak_sampled as f64,
            mib(peak_sampled),
            "≤ 150 MiB",
            peak_sampled <= 150 * 1024,
        ),
        errors_check(Scenario::C, errors),
    ])
}

// ---- (d) start-up and idle memory ------------------------------------------------------------

async fn start_up(o: &Options, out: &mut String) -> Result<Vec<Check>, BenchError> {
    let _ = writeln!(
        out,
        "(d) start-up to `/readyz` 200 and idle memory, 200 rules, fresh store"
    );
    let sink = start_sink().await?;
    let http = load::client(4);
    let rules = load_rules_yaml(198);
    let base = sink.base_url();
    let mut ready = Vec::new();
    let mut last = None;
    for round in 0..3 {
        let server = Server::start(&format!("d{round}"), &spec(o, &base, &rules), &http).await?;
        ready.push(server.ready_after);
        if let Some(previous) = last.replace(server) {
            previous.stop().await;
        }
    }
    let Some(server) = last else {
        return Err(BenchError::Failed("no server started".into()));
    };
    ready.sort();
    let median = ready[ready.len() / 2];
    let idle_for = Duration::from_secs(2).min(o.duration.max(Duration::from_millis(200)));
    let cpu0 = server.cpu_seconds();
    tokio::time::sleep(idle_for).await;
    let idle_cpu = server.cpu_seconds() - cpu0;
    let rss = server.rss_kib();
    let (anon, file) = server.rss_anon_file_kib();
    let _ = writeln!(
        out,
        "  ready after                {} (median of 3; {})",
        ms(median),
        ready.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "  idle                       RSS {} after {:.1} s idle (VmHWM {}), CPU {:.1} ms/s while idle",
        mib(rss),
        idle_for.as_secs_f64(),
        mib(server.peak_rss_kib()),
        idle_cpu * 1000.0 / idle_for.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  idle RSS split             {} private (heap, stacks), {} mapped from files (code, read-only data)",
        mib(anon),
        mib(file)
    );
    server.stop().await;
    Ok(vec![
        check(
            Scenario::D,
            "idle RSS",
            rss as f64,
            mib(rss),
            "≤ 20 MiB",
            rss <= 20 * 1024,
        ),
        check(
            Scenario::D,
            "ready after start",
            median.as_secs_f64(),
            ms(median),
            "≤ 300 ms",
            median <= Duration::from_millis(300),
        ),
    ])
}

// ---- (e) reply matching by number of rules ----------------------------------------------------

/// Nanoseconds per call of `f`, over about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut() -> bool) -> f64 {
    let mut calls = 0u64;
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            std::hint::black_box(f());
        }
        calls += 64;
        if started.elapsed() >= budget {
            break;
        }
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn matching(o: &Options, out: &mut String) -> Result<Vec<Check>, BenchError> {
    let _ = writeln!(
        out,
        "(e) reply matching (`RuleSet::match_reply`, in process) by number of reply rules"
    );
    let budget = (o.duration / 20).clamp(Duration::from_millis(20), Duration::from_millis(300));
    let mut worst = Vec::new();
    for n in [1usize, 100, 1000] {
        let loading = Instant::now();
        let set = fixtures::rule_set(&fixtures::reply_rules_yaml(n))?;
        let loaded_in = loading.elapsed();
        let last = format!("clave{}", n - 1);
        let first = time_per_call(budget, || {
            set.match_reply(Some("bench-1"), "clave0", None).is_some()
        });
        let last_ns = time_per_call(budget, || {
            set.match_reply(Some("bench-1"), &last, None).is_some()
        });
        let none = time_per_call(budget, || {
            set.match_reply(Some("bench-1"), "nada que ver", None)
                .is_some()
        });
        let _ = writeln!(
            out,
            "  {n:>5} rules                first rule {first:>8.0} ns   last rule {last_ns:>9.0} ns   no match {none:>9.0} ns   (loaded in {})",
            ms(loaded_in)
        );
        worst.push(last_ns.max(none));
    }
    let growth = worst[2] / worst[0].max(1.0);
    let _ = writeln!(
        out,
        "  1,000 rules cost {growth:.0}× one rule (worst case: the last rule or no match)"
    );
    Ok(vec![check(
        Scenario::E,
        "match cost, 1,000 vs 1 rule",
        growth,
        format!("{growth:.1}×"),
        "≤ 2× (index)",
        growth <= 2.0,
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_rounds_is_the_middle_figure_with_its_verdict() {
        let round = |value: f64| {
            vec![check(
                Scenario::A,
                "CPU per callback",
                value,
                format!("{value:.1} µs"),
                "≤ 40 µs",
                value <= 40.0,
            )]
        };
        let rounds = [round(45.0), round(38.0), round(41.0)];
        let m = medians(&rounds);
        assert_eq!((m.len(), m[0].value, m[0].met), (1, 41.0, false));
        let text = summary_of_rounds(&m, &rounds);
        assert!(text.contains("median of 3 rounds"), "{text}");
        assert!(text.contains("(45.0 µs, 38.0 µs, 41.0 µs)"), "{text}");
        // An even count takes the lower middle one.
        let m = medians(&[round(45.0), round(38.0)]);
        assert_eq!((m[0].value, m[0].met), (38.0, true));
    }
}
