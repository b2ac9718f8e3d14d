//! How the provider's calls travel: one pooled HTTP/1.1 client (hyper's) over TCP, with rustls
//! for `https://` (the platform's certificate verifier, as reqwest's `rustls` feature set it
//! up before), optionally through an HTTP proxy's CONNECT tunnel.
//!
//! Why not reqwest, which the rest of recuerda uses for its few other calls: a send is the one
//! call made per reply, and reqwest's layers around hyper's client (the redirect policy parses
//! the URL again as text for every request and its answer, the retry layer, the header map and
//! extension copies) were ~11 % of a reply's CPU in the reply benchmark (issue 8): A/B over 12
//! pairs, CPU per reply 0.887×. What those layers gave is kept here: connect and whole-call
//! timeouts, TCP_NODELAY, no redirects followed, no automatic retries, the proxy environment
//! variables, a fixed `user-agent`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt;
use std::time::Duration;

/// The largest answer read: the provider's are a few hundred bytes; a page that large is a
/// wrong `base_url` or a broken provider, and is quoted by its first bytes anyway.
const ANSWER_LIMIT: usize = 1 << 20;

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
    pub fn from_env(target: &Uri) -> Result<Route, ProxyError> {
        match Matcher::from_env().intercept(target) {
            None => Ok(Route::Direct),
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

/// `scheme://host:port/…` without a `user:password@`.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_string(),
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

enum Clients {
    Direct(Pool<HttpsConnector<HttpConnector>, Full<Bytes>>),
    Tunnel(Pool<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>),
}

/// A pooled client for one provider. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Transport {
    clients: std::sync::Arc<Clients>,
    timeout: Duration,
    user_agent: HeaderValue,
}

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
            Route::Direct => Clients::Direct(pool.build(tls()?.wrap_connector(tcp))),
            Route::Tunnel { proxy, auth } => {
                let mut tunnel = Tunnel::new(proxy.clone(), tcp);
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Clients::Tunnel(pool.build(tls()?.wrap_connector(tunnel)))
            }
        };
        Ok(Transport {
            clients: std::sync::Arc::new(clients),
            timeout,
            user_agent: HeaderValue::from_static(concat!("recuerda/", env!("CARGO_PKG_VERSION"))),
        })
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
            .header(USER_AGENT, self.user_agent.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::NotSent(chain(&e)))?;
        let exchange = async {
            let sent = match &*self.clients {
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
            let body = Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map_err(|e| Failure::Interrupted(chain(&*e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(Failure::TimedOut))
    }
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
            "http://proxy.clinica:3128"
        );
        assert_eq!(
            without_credentials("http://proxy:3128"),
            "http://proxy:3128"
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
