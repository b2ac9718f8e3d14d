//! The load generator: N concurrent clients POST bodies over keep-alive HTTP until a deadline
//! or until the bodies run out, each latency kept for percentiles.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the load goes: `http://host:port/path` (loopback; no TLS).
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("the load's URL `{url}` does not parse: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("the load's URL `{url}` is not plain http"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the load's URL `{url}` names no host"))?
            .to_string();
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        Ok(Target { authority, path })
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.authority))?;
        // Runs the connection until the sender is dropped or the server closes it.
        tokio::spawn(connection);
        Ok(sender)
    }

    fn request(
        &self,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("the load's request does not build: {e}"))
    }
}

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

/// An HTTP client for `connections` concurrent keep-alive connections: the benchmark's
/// control calls (metrics, firing a rule; the load itself goes through [`run`]).
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
///
/// Each client owns one keep-alive HTTP/1 connection (hyper's connection-level client, no
/// pool, no per-request timers): the load generator shares the machine with the server, and
/// what it spends per request is taken from the server's throughput. A connection that fails
/// is opened again for the next request.
pub async fn run<F>(
    url: &str,
    connections: usize,
    deadline: Duration,
    headers: &[(&'static str, String)],
    body: F,
) -> LoadResult
where
    F: Fn(u64) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let target = match Target::parse(url) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            return LoadResult {
                errors: 1,
                first_error: Some(e),
                ..Default::default()
            }
        }
    };
    let body = Arc::new(body);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + deadline;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let target = target.clone();
        let headers: Vec<(&'static str, String)> = headers.to_vec();
        let body = body.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = LoadResult::default();
            let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
            while Instant::now() < end {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(payload) = body(k) else {
                    mine.exhausted = true;
                    break;
                };
                let sender = match &mut conn {
                    Some(s) => s,
                    None => match target.connect().await {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let request = match target.request(&headers, payload) {
                    Ok(r) => r,
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert(e);
                        break;
                    }
                };
                let sent = Instant::now();
                let answer = match sender.send_request(request).await {
                    Ok(r) => {
                        let status = r.status();
                        // Read the whole answer so the connection is reused.
                        r.into_body()
                            .collect()
                            .await
                            .map(|b| (status, b.to_bytes()))
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok((status, _)) if status.is_success() => {
                        mine.ok += 1;
                        mine.latencies_us
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok((status, text)) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert_with(|| {
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&text))
                        });
                    }
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert(e);
                        conn = None;
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
