//! How the provider's calls travel: one pooled HTTP/1.1 client (hyper's) over TCP, with rustls
//! for `https://` (the platform's certificate verifier, as reqwest's `rustls` feature set it
//! up before), optionally through an HTTP proxy's CONNECT tunnel.
//!
//! Why not reqwest, which the rest of recuerda uses for its few other calls: a send is the one
//! call made per reply, and reqwest's layers around hyper's client (the redirect policy parses
//! the URL again as text for every request and its answer, the retry layer, the header map and
//! extension copies) were ~6 % of the server's CPU in the reply benchmark (issue 8; a first
//! cut measured 0.887× CPU per reply over 12 pairs). What those layers gave is kept here: a
//! connect timeout over the whole connection set-up (DNS, TCP, the proxy's CONNECT, the TLS
//! handshake) and a whole-call timeout, TCP_NODELAY and keep-alive probes, no redirects
//! followed, no automatic retries, the proxy environment variables (for `https://`), the
//! `user-agent` and `accept` headers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// The most of an answer read: the provider's are a few hundred bytes; one that large is a
/// wrong `base_url` or a broken provider, judged (and quoted) by its status and first bytes.
const ANSWER_LIMIT: usize = 1 << 20;

/// TCP keep-alive probes on pooled connections (reqwest's values), so a connection a NAT or
/// firewall dropped while idle is found dead before a send is written to it.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

/// How idle pooled connections are kept (reqwest's default, which the provider saw before).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Where the provider's calls connect: straight to the provider, or through an HTTP proxy's
/// CONNECT tunnel (for `https://` the TLS session still ends at the provider).
#[derive(Clone)]
pub enum Route {
    Direct,
    Tunnel {
        /// The proxy's own address (`http://host:port`).
        proxy: Uri,
        /// `Proxy-Authorization` for the CONNECT, from the proxy URL's user and password.
        auth: Option<HeaderValue>,
    },
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            // The proxy's credentials never reach a log line.
            Route::Tunnel { proxy, auth } => f
                .debug_struct("Tunnel")
                .field("proxy", &proxy.to_string())
                .field("auth", &auth.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// A proxy that recuerda cannot use for the provider's calls.
#[derive(Debug, thiserror::Error)]
#[error("proxy `{proxy}` is not usable for the provider's calls: {reason}")]
pub struct ProxyError {
    pub proxy: String,
    pub reason: String,
}

impl Route {
    /// The route the proxy environment variables choose for `target` (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper or lower case, read as curl reads them).
    /// Only `https://` targets are tunneled: a proxy for an `http://` one (a simulator on
    /// another host) is refused, since many proxies allow CONNECT to port 443 only.
    pub fn from_env(target: &Uri) -> Result<Route, ProxyError> {
        Route::chosen_by(&Matcher::from_env(), target)
    }

    fn chosen_by(matcher: &Matcher, target: &Uri) -> Result<Route, ProxyError> {
        match matcher.intercept(target) {
            None => Ok(Route::Direct),
            Some(intercept) if target.scheme_str() != Some("https") => Err(ProxyError {
                proxy: without_credentials(&intercept.uri().to_string()),
                reason: format!(
                    "`{target}` is plain `http://`, and recuerda tunnels only `https://` through \
                     a proxy: add its host to `NO_PROXY` (a simulator reached directly) or use \
                     `https://`"
                ),
            }),
            Some(intercept) => {
                Route::tunnel_to(intercept.uri().clone(), intercept.basic_auth().cloned())
            }
        }
    }

    /// Through the HTTP proxy at `proxy` (`http://[user:password@]host:port`).
    pub fn tunnel(proxy: &str) -> Result<Route, ProxyError> {
        let matcher = Matcher::builder().all(proxy.to_string()).build();
        let probe = Uri::from_static("https://provider.invalid/");
        match matcher.intercept(&probe) {
            Some(intercept) => {
                Route::tunnel_to(intercept.uri().clone(), intercept.basic_auth().cloned())
            }
            None => Err(ProxyError {
                proxy: without_credentials(proxy),
                reason: "not a proxy URL: write it as `http://host:port`".into(),
            }),
        }
    }

    fn tunnel_to(proxy: Uri, auth: Option<HeaderValue>) -> Result<Route, ProxyError> {
        match proxy.scheme_str() {
            Some("http") => Ok(Route::Tunnel { proxy, auth }),
            other => Err(ProxyError {
                proxy: without_credentials(&proxy.to_string()),
                reason: format!(
                    "only HTTP proxies (CONNECT) are supported, not `{}://`; set `HTTPS_PROXY` to an \
                     `http://host:port` proxy, or add the provider's host to `NO_PROXY`",
                    other.unwrap_or("")
                ),
            }),
        }
    }
}

/// `url` without a `user:password@`, for messages.
fn without_credentials(url: &str) -> String {
    let text = match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    };
    // Not a URL with a host (`user:pw@host:port` reads as scheme `user`): whatever stands
    // before an `@` may be a password.
    match text.rfind('@') {
        Some(at) => format!("***@{}", &text[at + 1..]),
        None => text,
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] std::io::Error),
}

/// Why a call failed before an answer was read whole.
#[derive(Debug)]
pub enum Failure {
    /// No connection was made (refused, DNS, TLS handshake, the proxy's refusal): no byte of
    /// the request left.
    NotSent(String),
    /// The whole call took longer than the timeout.
    TimedOut,
    /// The connection broke after the request may have left.
    Interrupted(String),
}

/// A connector whose whole set-up (DNS, TCP, the proxy's CONNECT, the TLS handshake) must end
/// within `limit`: past it the pool reports a connect error, so the call is `NotSent` and
/// retried rather than left to the whole-call timeout (which would make a send `unknown`), and
/// no connection attempt lingers in the background unbounded.
#[derive(Clone)]
struct Timed<C> {
    inner: C,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> Service<Uri> for Timed<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection within the connect timeout ({limit:?}: DNS, TCP, proxy \
                         and TLS handshake)"
                    ),
                )
                .into()),
            }
        })
    }
}

#[derive(Clone)]
enum Clients {
    Direct(Pool<Timed<HttpsConnector<HttpConnector>>, Full<Bytes>>),
    Tunnel(Pool<Timed<HttpsConnector<Tunnel<HttpConnector>>>, Full<Bytes>>),
}

/// A pooled client for one provider. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Transport {
    clients: Clients,
    timeout: Duration,
}

static ACCEPT_ANY: HeaderValue = HeaderValue::from_static("*/*");
static RECUERDA: HeaderValue =
    HeaderValue::from_static(concat!("recuerda/", env!("CARGO_PKG_VERSION")));

impl Transport {
    pub fn new(
        route: &Route,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Transport, BuildError> {
        let mut tcp = HttpConnector::new();
        // The connector also dials `https://` addresses; TLS is the layer above's.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_keepalive(Some(KEEPALIVE));
        tcp.set_keepalive_interval(Some(KEEPALIVE));
        tcp.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
                .map_err(BuildError::Tls)
                .map(|builder| builder.https_or_http().enable_http1())
        };
        let mut pool = Pool::builder(TokioExecutor::new());
        // Without a timer the pool would keep idle connections forever.
        pool.pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE);
        let clients = match route {
            Route::Direct => Clients::Direct(pool.build(Timed {
                inner: tls()?.wrap_connector(tcp),
                limit: connect_timeout,
            })),
            Route::Tunnel { proxy, auth } => {
                let mut tunnel = Tunnel::new(proxy.clone(), tcp);
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Clients::Tunnel(pool.build(Timed {
                    inner: tls()?.wrap_connector(tunnel),
                    limit: connect_timeout,
                }))
            }
        };
        Ok(Transport { clients, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` to `uri` and reads the whole answer, all within the timeout.
    pub async fn post(
        &self,
        uri: &Uri,
        content_type: HeaderValue,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, content_type)
            .header(USER_AGENT, RECUERDA.clone())
            .header(ACCEPT, ACCEPT_ANY.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::NotSent(chain(&e)))?;
        let exchange = async {
            let sent = match &self.clients {
                Clients::Direct(pool) => pool.request(request).await,
                Clients::Tunnel(pool) => pool.request(request).await,
            };
            let response = sent.map_err(|e| {
                if e.is_connect() {
                    Failure::NotSent(chain(&e))
                } else {
                    Failure::Interrupted(chain(&e))
                }
            })?;
            let status = response.status();
            let body = read_answer(response.into_body())
                .await
                .map_err(|e| Failure::Interrupted(chain(&e)))?;
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Failure::TimedOut))
    }
}

/// The answer's body, or its first [`ANSWER_LIMIT`] bytes: the rest is not read (the
/// connection is then dropped, not pooled), and the status still decides.
async fn read_answer(mut body: hyper::body::Incoming) -> Result<Bytes, hyper::Error> {
    let mut answer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = ANSWER_LIMIT - answer.len();
            answer.extend_from_slice(&data[..data.len().min(room)]);
            if answer.len() == ANSWER_LIMIT {
                break;
            }
        }
    }
    Ok(answer.freeze())
}

/// The error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper's errors repeat their cause in their own text.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_lose_their_credentials_in_messages() {
        assert_eq!(
            without_credentials("http://ana:secreto@proxy.clinica:3128"),
            "http://proxy.clinica:3128/"
        );
        assert_eq!(
            without_credentials("http://proxy:3128"),
            "http://proxy:3128/"
        );
        // Not a URL at all: what stands before the `@` is hidden all the same.
        assert_eq!(
            without_credentials("ana:secreto@proxy:3128"),
            "***@proxy:3128"
        );
    }

    #[test]
    fn a_socks_proxy_is_refused_with_what_to_do() {
        let error = Route::tunnel("socks5://user:pw@127.0.0.1:1080").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("only HTTP proxies"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }

    #[test]
    fn an_http_proxy_with_credentials_tunnels_with_basic_auth() {
        let route = Route::tunnel("http://ana:secreto@127.0.0.1:3128").unwrap();
        match &route {
            Route::Tunnel { proxy, auth } => {
                assert_eq!(
                    proxy.authority().map(|a| a.as_str()),
                    Some("127.0.0.1:3128")
                );
                assert!(auth.is_some());
            }
            Route::Direct => panic!("expected a tunnel"),
        }
        assert!(!format!("{route:?}").contains("secreto"));
    }

    #[test]
    fn the_proxy_variables_tunnel_https_and_refuse_a_proxied_plain_http_target() {
        let matcher = Matcher::builder()
            .all("http://ana:secreto@127.0.0.1:3128".to_string())
            .no("localhost".to_string())
            .build();
        let route = Route::chosen_by(&matcher, &Uri::from_static("https://api.example/send/"));
        assert!(matches!(route, Ok(Route::Tunnel { .. })), "{route:?}");
        let error =
            Route::chosen_by(&matcher, &Uri::from_static("http://sim.example/send/")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("NO_PROXY"), "{text}");
        assert!(!text.contains("secreto"), "{text}");
        let route = Route::chosen_by(&matcher, &Uri::from_static("http://localhost:9/send/"));
        assert!(matches!(route, Ok(Route::Direct)), "{route:?}");
    }

    #[tokio::test]
    async fn https_clients_build_with_the_platform_verifier() {
        let transport = Transport::new(
            &Route::Direct,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(transport.is_ok());
    }
}
