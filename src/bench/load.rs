//! The load generator: N concurrent clients POST bodies over keep-alive HTTP until a deadline
//! or until the bodies run out, each latency kept for percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests answered otherwise, or not answered.
    pub errors: u64,
    /// First request sent → last answer.
    pub elapsed: Duration,
    /// Latencies of the 2xx answers, sorted, in microseconds.
    latencies_us: Vec<u32>,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    /// True when the bodies ran out before the deadline.
    pub exhausted: bool,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        rate(self.ok, self.elapsed)
    }

    /// The `q` quantile (0–1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(self.latencies_us[i.min(self.latencies_us.len() - 1)] as u64)
    }
}

pub fn rate(n: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        n as f64 / elapsed.as_secs_f64()
    }
}

/// An HTTP client for `connections` concurrent keep-alive connections.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

/// POSTs `body(k)` for k = 0, 1, 2, … to `url` from `connections` concurrent clients, until
/// `deadline` passes or `body` returns `None`. Each request carries `headers`.
pub async fn run<F>(
    http: &reqwest::Client,
    url: &str,
    connections: usize,
    deadline: Duration,
    headers: &[(&'static str, String)],
    body: F,
) -> LoadResult
where
    F: Fn(u64) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + deadline;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let http = http.clone();
        let url = url.to_string();
        let headers: Vec<(&'static str, String)> = headers.to_vec();
        let body = body.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = LoadResult::default();
            while Instant::now() < end {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(payload) = body(k) else {
                    mine.exhausted = true;
                    break;
                };
                let mut request = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(payload);
                for (name, value) in &headers {
                    request = request.header(*name, value);
                }
                let sent = Instant::now();
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        // Read the whole answer so the connection is reused.
                        let _ = r.bytes().await;
                        mine.ok += 1;
                        mine.latencies_us
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        mine.errors += 1;
                        mine.first_error
                            .get_or_insert_with(|| format!("HTTP {status}: {text}"));
                    }
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            mine
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.ok += r.ok;
            total.errors += r.errors;
            total.exhausted |= r.exhausted;
            total.latencies_us.extend(r.latencies_us);
            if total.first_error.is_none() {
                total.first_error = r.first_error;
            }
        }
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
}
