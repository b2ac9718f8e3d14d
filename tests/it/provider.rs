//! Tests of the provider client over real HTTP against a raw test server that records exactly
//! what arrived; of the domain types; and of webhook payload parsing.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use recuerda::provider::webhook::{self, DeliveryStatus, WebhookError, WebhookEvent};
use recuerda::provider::*;
use recuerda::secret::Secret;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const LOGIN: &str = "demo@gmail.com";
pub(crate) const TOKEN: &str = "b6fd61ec974d1652082a802a4d8e443712138ed";

// ---- raw test server ------------------------------------------------------------------------

/// One form field as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub value: String,
    /// Multipart only: a text field has neither a file name nor a content type.
    pub file_name: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub fields: Vec<Field>,
}

impl Captured {
    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Status and body (sent as `application/json`, whatever it holds).
    Body(u16, String),
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct ServerState {
    answer: Answer,
    requests: Arc<Mutex<Vec<Captured>>>,
}

pub(crate) struct RawServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Captured>>>,
}

impl RawServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().unwrap().clone()
    }

    pub fn client(&self) -> Client {
        client_for(&self.base_url(), Duration::from_secs(5))
    }
}

pub(crate) fn client_for(base_url: &str, timeout: Duration) -> Client {
    Client::from_parts(
        base_url,
        LOGIN,
        Secret::new(TOKEN),
        Duration::from_secs(1),
        timeout,
    )
    .unwrap()
}

/// A server on 127.0.0.1:0 that records every request and gives every one the same answer.
pub(crate) async fn raw_server(answer: Answer) -> RawServer {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let state = ServerState {
        answer,
        requests: requests.clone(),
    };
    let app = axum::Router::new().fallback(record).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    RawServer { addr, requests }
}

async fn record(State(state): State<ServerState>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut fields = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
            return (StatusCode::BAD_REQUEST, "bad multipart").into_response();
        };
        while let Ok(Some(field)) = multipart.next_field().await {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(str::to_string);
            let value = field.text().await.unwrap_or_default();
            fields.push(Field {
                name,
                value,
                file_name,
                content_type,
            });
        }
    } else if let Ok(axum::Form(pairs)) =
        axum::Form::<Vec<(String, String)>>::from_request(request, &()).await
    {
        fields = pairs
            .into_iter()
            .map(|(name, value)| Field {
                name,
                value,
                file_name: None,
                content_type: None,
            })
            .collect();
    }
    state.requests.lock().unwrap().push(Captured {
        method,
        path,
        content_type,
        fields,
    });
    match state.answer {
        Answer::Body(status, body) => (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
    }
}

fn request(variables: &[&str], media: Option<&str>, custom_field: Option<&str>) -> SendRequest {
    SendRequest::from_parts(
        990,
        "+57 310 233 4455",
        variables.iter().map(|v| v.to_string()).collect(),
        media,
        custom_field,
    )
    .unwrap()
}

const SENT: &str = r#"{"code": 1, "status": "mensaje enviado", "messageId": "0e1add43-f91c-4e7c-8805-221ef6b27b98"}"#;

/// Every error's text must be free of the token.
fn assert_secret_free(error: &ProviderError) {
    let text = format!("{error} {error:?}");
    assert!(!text.contains(TOKEN), "token leaked: {text}");
}

// ---- wire format ----------------------------------------------------------------------------

#[tokio::test]
async fn send_posts_multipart_with_exact_fields_and_intact_utf8() {
    let server = raw_server(Answer::Body(200, SENT.into())).await;
    let req = request(
        &["Carlos", "$100", "miércoles", "Davivienda", "bancolombia"],
        Some("https://servercliente.com/jemplo-de-Archivo-PDF-508.pdf"),
        Some("cita-1234 ñ 😀"),
    );
    let id = server.client().send(&req).await.unwrap();
    assert_eq!(id.as_str(), "0e1add43-f91c-4e7c-8805-221ef6b27b98");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/send/");
    assert!(
        r.content_type.starts_with("multipart/form-data; boundary="),
        "{}",
        r.content_type
    );
    assert_eq!(
        r.names(),
        [
            "login",
            "token",
            "id_template",
            "mobile",
            "template_variables",
            "media",
            "custom_field"
        ]
    );
    assert_eq!(r.value("login"), Some(LOGIN));
    assert_eq!(r.value("token"), Some(TOKEN));
    assert_eq!(r.value("id_template"), Some("990"));
    assert_eq!(r.value("mobile"), Some("573102334455"));
    assert_eq!(
        r.value("template_variables"),
        Some("[Carlos] [$100] [miércoles] [Davivienda] [bancolombia]")
    );
    assert_eq!(
        r.value("media"),
        Some("https://servercliente.com/jemplo-de-Archivo-PDF-508.pdf")
    );
    assert_eq!(r.value("custom_field"), Some("cita-1234 ñ 😀"));
    for field in &r.fields {
        assert_eq!(field.file_name, None, "{} must be a text field", field.name);
        assert_eq!(
            field.content_type, None,
            "{} must be a text field",
            field.name
        );
    }
}

#[tokio::test]
async fn send_leaves_out_absent_optional_fields() {
    let server = raw_server(Answer::Body(200, SENT.into())).await;
    server
        .client()
        .send(&request(&[], None, None))
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.names(), ["login", "token", "id_template", "mobile"]);
}

#[tokio::test]
async fn balance_posts_urlencoded_and_reads_a_string_or_a_number() {
    let server = raw_server(Answer::Body(
        200,
        r#"{"balance": "163", "status": "success"}"#.into(),
    ))
    .await;
    assert_eq!(server.client().balance().await.unwrap(), 163);
    let r = &server.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/balance/");
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    assert_eq!(r.names(), ["login", "token"]);
    assert_eq!(r.value("login"), Some(LOGIN));
    assert_eq!(r.value("token"), Some(TOKEN));

    let server = raw_server(Answer::Body(200, r#"{"balance": 42}"#.into())).await;
    assert_eq!(server.client().balance().await.unwrap(), 42);
}

#[tokio::test]
async fn templates_posts_urlencoded_and_parses_tolerantly() {
    let answer = r#"[
      {"nombre_plantilla": "Asignación de cita",
       "plantilla_aprobada": "¡Hola *{1}*! A continuación, le presentamos información de su cita *asignada* en modalidad *presencial* con el profesional *{2}*\n\nFecha y hora: *{3}*",
       "status": "success"},
      {"id_template": "990", "nombre_plantilla": "Recordatorio", "plantilla_aprobada": "Hola {1}, {2} {1}", "status": "approved", "categoria": "UTILITY"},
      {"id": 991, "nombre_plantilla": "Confirmada", "plantilla_aprobada": "Gracias", "status": "pending"}
    ]"#;
    let server = raw_server(Answer::Body(200, answer.into())).await;
    let templates = server.client().templates().await.unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.path, "/template/");
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    assert_eq!(r.names(), ["login", "token"]);

    let summary: Vec<(Option<u32>, &str, &str, usize)> = templates
        .iter()
        .map(|t| (t.id, t.name.as_str(), t.status.as_str(), t.placeholders))
        .collect();
    assert_eq!(
        summary,
        [
            (None, "Asignación de cita", "success", 3),
            (Some(990), "Recordatorio", "approved", 2),
            (Some(991), "Confirmada", "pending", 0),
        ]
    );
    assert!(templates[0].body.contains("\n\nFecha y hora: *{3}*"));
}

// ---- answers and dispositions ---------------------------------------------------------------

#[tokio::test]
async fn every_send_code_maps_to_its_error_and_disposition() {
    use Disposition::*;
    let cases = [
        (
            2,
            StopSending,
            "provider refused the login (code 2): check `provider.login` and `provider.token`",
        ),
        (3, StopSending, "(code 3)"),
        (4, FailMessage, "(code 4)"),
        (5, PauseForBalance, "top up the balance"),
        (6, FailMessage, "(code 6)"),
        (
            7,
            FailMessage,
            "template id does not belong to this account",
        ),
        (8, FailMessage, "(code 8)"),
    ];
    for (code, disposition, text) in cases {
        for body in [
            format!(r#"{{"code": {code}, "status": "error"}}"#),
            format!(r#"{{"code": "{code}"}}"#),
        ] {
            let server = raw_server(Answer::Body(200, body.clone())).await;
            let error = server
                .client()
                .send(&request(&["Carlos"], None, None))
                .await
                .unwrap_err();
            assert_eq!(error.code().map(ProviderCode::code), Some(code), "{body}");
            assert_eq!(error.disposition(), disposition, "{body}");
            assert!(error.to_string().contains(text), "{body}: {error}");
            assert_secret_free(&error);
        }
    }
    let code_2 = ProviderError::Refused(ProviderCode::Authentication);
    assert_eq!(
        code_2.to_string(),
        "provider refused the login (code 2): check `provider.login` and `provider.token`"
    );
    assert_eq!(ProviderCode::from_code(7).unwrap().class(), CodeClass::Rule);
    assert_eq!(
        ProviderCode::from_code(5).unwrap().class(),
        CodeClass::Balance
    );
    assert_eq!(ProviderCode::from_code(1), None);
    assert_eq!(ProviderCode::from_code(9), None);
}

#[tokio::test]
async fn code_1_without_message_id_or_undocumented_code_is_unknown() {
    for body in [
        r#"{"code": 1, "status": "mensaje enviado"}"#,
        r#"{"code": 99}"#,
        r#"{"ok": true}"#,
    ] {
        let server = raw_server(Answer::Body(200, body.into())).await;
        let error = server
            .client()
            .send(&request(&[], None, None))
            .await
            .unwrap_err();
        assert_eq!(error.disposition(), Disposition::Unknown, "{body}: {error}");
    }
}

#[tokio::test]
async fn balance_and_templates_refusals() {
    let server = raw_server(Answer::Body(200, r#"{"code": 2}"#.into())).await;
    let error = server.client().balance().await.unwrap_err();
    assert_eq!(error.code(), Some(ProviderCode::Authentication));
    let error = server.client().templates().await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::StopSending);

    let server = raw_server(Answer::Body(200, r#"{"code": 3}"#.into())).await;
    assert_eq!(
        server.client().balance().await.unwrap_err().code(),
        Some(ProviderCode::NoChatbot)
    );

    // Code 4 on `/template/` means "no approved templates": an empty list.
    let server = raw_server(Answer::Body(200, r#"{"code": "4"}"#.into())).await;
    assert_eq!(server.client().templates().await.unwrap(), []);
}

#[tokio::test]
async fn throttled_or_failing_provider_is_retried() {
    for status in [429, 500, 502, 503] {
        let server = raw_server(Answer::Body(status, "<h1>busy</h1>".into())).await;
        let error = server
            .client()
            .send(&request(&[], None, None))
            .await
            .unwrap_err();
        assert_eq!(error.disposition(), Disposition::Retry, "{status}: {error}");
        assert!(error.to_string().contains(&status.to_string()), "{error}");
        let error = server.client().balance().await.unwrap_err();
        assert_eq!(error.disposition(), Disposition::Retry);
    }
}

#[tokio::test]
async fn refused_connection_is_retried_because_nothing_was_sent() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client_for(&format!("http://{addr}"), Duration::from_secs(2));
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    assert!(matches!(error, ProviderError::NotSent { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(error.to_string().contains("nothing was sent"), "{error}");
    assert_secret_free(&error);
}

/// A CONNECT proxy on 127.0.0.1:0 that records each CONNECT's first lines and either tunnels
/// (answering 200 and copying bytes both ways) or refuses with `refusal`.
async fn connect_proxy(refusal: Option<&'static str>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                seen.lock().unwrap().push(head.clone());
                if let Some(refusal) = refusal {
                    let _ = client.write_all(refusal.as_bytes()).await;
                    return;
                }
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, heads)
}

fn client_via(base_url: &str, proxy: &str) -> Client {
    Client::routed(
        base_url,
        LOGIN,
        Secret::new(TOKEN),
        Duration::from_secs(1),
        Duration::from_secs(5),
        &Route::tunnel(proxy).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn calls_go_through_an_http_proxy_tunnel_with_its_credentials() {
    let server = raw_server(Answer::Body(200, SENT.into())).await;
    let (proxy, heads) = connect_proxy(None).await;
    let client = client_via(&server.base_url(), &format!("http://ana:secreto@{proxy}"));
    let id = client
        .send(&request(&["Carlos"], None, None))
        .await
        .unwrap();
    assert_eq!(id.as_str(), "0e1add43-f91c-4e7c-8805-221ef6b27b98");
    // The pooled connection is the tunnel: a second call opens no second one.
    client.send(&request(&["Ana"], None, None)).await.unwrap();
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with(&format!("CONNECT {} HTTP/1.1\r\n", server.addr)),
        "{heads:?}"
    );
    // `ana:secreto` in base64.
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("proxy-authorization: basic yw5honnly3jldg8="),
        "{heads:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/send/");
    assert_eq!(requests[0].value("mobile"), Some("573102334455"));
}

#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_means_nothing_was_sent() {
    let server = raw_server(Answer::Body(200, SENT.into())).await;
    let (proxy, _) =
        connect_proxy(Some("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")).await;
    let client = client_via(&server.base_url(), &format!("http://{proxy}"));
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    assert!(matches!(error, ProviderError::NotSent { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(server.requests().is_empty());
    assert_secret_free(&error);
}

#[tokio::test]
async fn https_to_a_server_without_tls_fails_the_handshake_and_sends_nothing() {
    // The plain-HTTP test server answers the TLS hello with an HTTP 400: the handshake fails,
    // so the request itself never left.
    let server = raw_server(Answer::Body(200, SENT.into())).await;
    let client = client_for(&format!("https://{}", server.addr), Duration::from_secs(2));
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    assert!(matches!(error, ProviderError::NotSent { .. }), "{error:?}");
    assert!(server.requests().is_empty());
    assert_secret_free(&error);
}

#[tokio::test]
async fn a_handshake_that_never_ends_is_a_connect_failure_not_an_unknown_send() {
    // A server that accepts the TCP connection and never answers the TLS hello: the whole
    // connection set-up is bounded by the connect timeout, so nothing was sent and the send
    // is retried, not left to the whole-call timeout as `unknown`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = Client::from_parts(
        &format!("https://{addr}"),
        LOGIN,
        Secret::new(TOKEN),
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .unwrap();
    let started = Instant::now();
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, ProviderError::NotSent { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(error.to_string().contains("connect timeout"), "{error}");
}

#[tokio::test]
async fn an_oversized_failure_answer_is_still_judged_by_its_status() {
    // 2 MiB of a 503 page: only its first MiB is read, and the 503 still says "retry".
    let server = raw_server(Answer::Body(503, "x".repeat(2 << 20))).await;
    let error = server
        .client()
        .send(&request(&[], None, None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProviderError::Unavailable { status: 503, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[test]
fn a_base_url_with_credentials_is_refused_without_showing_them() {
    let error = Client::from_parts(
        "https://ana:secreto@api.example/ws",
        LOGIN,
        Secret::new(TOKEN),
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ProviderError::BaseUrl { .. }), "{error:?}");
    assert!(text.contains("provider.login"), "{text}");
    assert!(
        !text.contains("secreto") && !text.contains("ana:"),
        "{text}"
    );
}

#[tokio::test]
async fn hanging_provider_times_out_with_unknown_outcome() {
    let server = raw_server(Answer::Hang).await;
    let client = client_for(&server.base_url(), Duration::from_millis(300));
    let started = Instant::now();
    let error = client
        .send(&request(&["Carlos"], None, None))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(matches!(error, ProviderError::Timeout { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Unknown);
    assert!(
        error.to_string().contains("may or may not have been sent"),
        "{error}"
    );
    // The request did reach the server: exactly why the outcome is unknown.
    assert_eq!(server.requests().len(), 1);

    // Without side effects, the same timeout is simply retried.
    let error = client.balance().await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[tokio::test]
async fn connection_dropped_mid_request_is_unknown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 64];
            let _ = socket.read(&mut buffer).await;
            drop(socket);
        }
    });
    let client = client_for(&format!("http://{addr}"), Duration::from_secs(2));
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    assert!(
        matches!(error, ProviderError::Interrupted { .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Unknown);
}

#[tokio::test]
async fn html_answer_to_a_send_is_unknown_quoted_short_and_without_secrets() {
    let html = format!(
        "<html>\n<body>Fatal error in /var/www/ws.php token={TOKEN} login={LOGIN} {}</body></html>",
        "detalle ".repeat(100)
    );
    let server = raw_server(Answer::Body(200, html)).await;
    let client = server.client();
    let error = client.send(&request(&[], None, None)).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Unknown);
    let ProviderError::UnexpectedAnswer { excerpt, .. } = &error else {
        panic!("expected UnexpectedAnswer, got {error:?}");
    };
    assert!(excerpt.chars().count() <= EXCERPT_CHARS, "{excerpt}");
    assert!(excerpt.starts_with("<html> <body>Fatal error"), "{excerpt}");
    assert!(!excerpt.contains(LOGIN), "{excerpt}");
    assert_secret_free(&error);

    // The same answer to `balance` is an error, without the token either.
    let error = client.balance().await.unwrap_err();
    assert!(matches!(error, ProviderError::UnexpectedAnswer { .. }));
    assert_secret_free(&error);
}

#[tokio::test]
async fn token_never_shows_in_debug_or_missing_credentials_errors() {
    let client = client_for("http://127.0.0.1:9", Duration::from_secs(1));
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("***"), "{debug}");

    let mut config = recuerda::config::Config::default().provider;
    config.login = Some(LOGIN.into());
    let error = Client::new(&config).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no provider token: set `provider.token` in recuerda.yaml or `RECUERDA_PROVIDER_TOKEN` in the environment"
    );
    config.login = None;
    config.token = Some(Secret::new(TOKEN));
    let error = Client::new(&config).unwrap_err();
    assert!(error.to_string().contains("`provider.login`"), "{error}");
    assert!(
        error.to_string().contains("RECUERDA_PROVIDER_LOGIN"),
        "{error}"
    );
    assert_secret_free(&error);
}

#[test]
fn failure_reasons_cover_the_documented_codes() {
    for code in [1002, 1003, 1004, 1005, 1006, 1007, 1008, 1010, 1011] {
        assert!(failure_reason(code).is_some(), "{code}");
    }
    assert_eq!(failure_reason(1002), Some("number not active on WhatsApp"));
    assert_eq!(failure_reason(1009), None);
    assert_eq!(failure_reason(1), None);
}

// ---- domain types ---------------------------------------------------------------------------

#[test]
fn mobiles_normalize_or_say_why_not() {
    let ok = [
        ("573102334455", "573102334455"),
        ("+57 310 233 4455", "573102334455"),
        ("310-233-4455", "573102334455"),
        ("(310) 2334455", "573102334455"),
        ("3102334455", "573102334455"),
        (" 0057 300 222 2222 ", "573002222222"),
        ("+573502223344", "573502223344"),
        ("310.233.4455", "573102334455"),
    ];
    for (input, expected) in ok {
        let mobile = Mobile::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(mobile.as_str(), expected, "{input}");
        assert_eq!(mobile.to_string(), expected, "{input}");
    }
    let refused = [
        ("6012345678", "landline"),
        ("+57 601 234 5678", "landline"),
        ("576042345678", "landline"),
        ("+1 212 555 0100", "not Colombian"),
        ("+34 612 345 678", "not Colombian"),
        ("442071234567", "not Colombian"),
        ("57300222222", "11 digits"),
        ("310 233 445", "9 digits"),
        ("2125550100", "start with 3"),
        ("574102334455", "start with 3"),
        ("310abc4455", "contains `a`"),
        ("", "empty"),
        ("   ", "empty"),
    ];
    for (input, fragment) in refused {
        let error = Mobile::parse(input).expect_err(input);
        let text = error.to_string();
        assert!(text.contains(fragment), "{input}: {text}");
        if !input.trim().is_empty() {
            assert!(text.contains(input.trim()), "the input is shown: {text}");
        }
    }
}

#[test]
fn mobile_masks_serializes_and_keeps_reply_digits() {
    let mobile = Mobile::parse("+57 310 233 4455").unwrap();
    assert_eq!(mobile.masked(), "57310****455");
    assert!(!format!("{mobile:?}").contains("2334"));
    assert_eq!(serde_json::to_string(&mobile).unwrap(), r#""573102334455""#);
    let back: Mobile = serde_json::from_str(r#""310 233 4455""#).unwrap();
    assert_eq!(back, mobile);
    assert!(serde_json::from_str::<Mobile>(r#""6012345678""#).is_err());
    assert_eq!(Mobile::from_reply("57300222222"), "57300222222");
    assert_eq!(Mobile::from_reply("+57 300-222 2222"), "573002222222");
}

#[test]
fn media_urls_by_scheme_and_extension() {
    let ok = [
        "https://servercliente.com/jemplo-de-Archivo-PDF-508.pdf",
        "http://clinica.example/a/b/indicaciones.JPG",
        "https://clinica.example/f.jpeg?token=abc&x=1#page=2",
        "https://clinica.example/f.PnG",
        "https://clinica.example/notas.docx",
        "https://clinica.example/v.mp4",
    ];
    for input in ok {
        let media = MediaUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(media.as_str(), input);
    }
    let refused = [
        ("ftp://clinica.example/f.pdf", "`ftp:`"),
        ("file:///tmp/f.pdf", "`file:`"),
        ("https://clinica.example/f.exe", "`.exe`"),
        ("https://clinica.example/f.gif?x=.pdf", "`.gif`"),
        ("https://clinica.example/descargar", "no file extension"),
        ("https://clinica.example/", "no file extension"),
        ("https://clinica.example/.pdf", "no file extension"),
        ("indicaciones.pdf", "not a URL"),
        ("", "not a URL"),
    ];
    for (input, fragment) in refused {
        let text = MediaUrl::parse(input).expect_err(input).to_string();
        assert!(text.contains(fragment), "{input}: {text}");
    }
}

#[test]
fn custom_field_counts_characters_not_bytes() {
    let max_multibyte = "ñ".repeat(1_000); // 2,000 bytes, 1,000 characters
    assert!(CustomField::parse(&max_multibyte).is_ok());
    assert!(CustomField::parse(&"a".repeat(1_000)).is_ok());
    assert!(CustomField::parse(&"😀".repeat(1_000)).is_ok());
    for too_long in ["ñ".repeat(1_001), "a".repeat(1_001), "😀".repeat(1_001)] {
        let text = CustomField::parse(&too_long).unwrap_err().to_string();
        assert!(text.contains("1001 characters"), "{text}");
        assert!(text.contains("limit of 1000"), "{text}");
    }
    assert!(CustomField::parse("").is_err());
    assert!(CustomField::parse("  ").is_err());
    assert_eq!(CustomField::parse("cita-42").unwrap().as_str(), "cita-42");
}

#[test]
fn variables_refuse_empty_values_and_brackets_and_check_count() {
    let vars = Variables::new(["Carlos", "$100", "miércoles"]).unwrap();
    assert_eq!(
        vars.to_wire().as_deref(),
        Some("[Carlos] [$100] [miércoles]")
    );
    assert!(vars.check_count(3).is_ok());
    let count = vars.check_count(4).unwrap_err().to_string();
    assert!(count.contains("4 placeholders but 3 variables"), "{count}");
    assert_eq!(Variables::empty().to_wire(), None);

    let text = Variables::new(["Carlos", " "]).unwrap_err().to_string();
    assert!(text.contains("variable {2} is empty"), "{text}");
    let text = Variables::new(["[Carlos]"]).unwrap_err().to_string();
    assert!(text.contains("`[Carlos]` contains `[`"), "{text}");
    let text = Variables::new(["a", "b", "x]"]).unwrap_err().to_string();
    assert!(text.contains("variable {3}"), "{text}");
}

#[test]
fn send_request_from_parts_refuses_the_first_bad_part() {
    let error =
        SendRequest::from_parts(990, "6012345678", vec!["a".into()], None, None).unwrap_err();
    assert!(matches!(
        error,
        InvalidSend::Mobile(MobileError::Landline { .. })
    ));
    let error = SendRequest::from_parts(
        990,
        "3102334455",
        vec![],
        Some("https://x.example/a.exe"),
        None,
    )
    .unwrap_err();
    assert!(matches!(error, InvalidSend::Media(_)), "{error:?}");
    assert!("abc".parse::<TemplateId>().is_err());
    assert_eq!("990".parse::<TemplateId>().unwrap(), TemplateId(990));
    assert!(MessageId::parse("  ").is_err());
}

// ---- webhook --------------------------------------------------------------------------------

fn status_event(body: &str) -> StatusEvent {
    match webhook::parse(body.as_bytes()) {
        Ok(WebhookEvent::Status(event)) => event,
        other => panic!("expected a status event from {body}, got {other:?}"),
    }
}

#[test]
fn seed_webhook_payloads_parse_verbatim() {
    let failed = status_event(
        r#"{
  "type": "message-event",
  "type2": "failed",
  "code": "xxxx",
  "reason": "xxxxx",
  "messageId": "xxxx"
}"#,
    );
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.message_id.as_str(), "xxxx");
    assert_eq!(failed.code, None);
    assert_eq!(failed.reason.as_deref(), Some("xxxxx"));

    let sent = status_event(
        r#"{
  "type": "message-event",
  "type2": " sent",
  "messageId_whatsapp": "xxxx",
  "fecha_envio_por_whatsapp": "xxxxx",
  "&messageId": "xxxx"
}"#,
    );
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(sent.message_id.as_str(), "xxxx");
    assert_eq!(sent.whatsapp_id.as_deref(), Some("xxxx"));
    assert_eq!(sent.raw_date.as_deref(), Some("xxxxx"));
    assert_eq!(sent.date, None);

    let delivered = status_event(
        r#"{
  "type": "message-event",
  "type2": " delivered",
  "messageId_whatsapp": "xxxx",
  "fecha_envio_por_whatsapp": "xxxxx",
  "&messageId": "xxxx"
}"#,
    );
    assert_eq!(delivered.status, DeliveryStatus::Delivered);

    // Verbatim, trailing spaces included.
    let read = status_event(
        "{  \n  \"type\": \"message-event\",  \n  \"type2\": \" read\",  \n  \"messageId_whatsapp\": \"xxxx\",  \n  \"fecha_lectura_usuario\": \"xxxxx\",  \n  \"&messageId\": \"xxxx\"  \n}",
    );
    assert_eq!(read.status, DeliveryStatus::Read);
    assert_eq!(read.raw_date.as_deref(), Some("xxxxx"));

    let reply = webhook::parse(
        "{  \n  \"mobile\": \"57300222222\",  \n  \"message\": \"Hola, respondiendo mensaje desde el whatsapp\",  \n  \"custom_field\": \"1020-3040-5060-7089\"  \n}".as_bytes(),
    )
    .unwrap();
    assert_eq!(
        reply,
        WebhookEvent::Reply(ReplyEvent {
            mobile: "57300222222".into(),
            message: "Hola, respondiendo mensaje desde el whatsapp".into(),
            custom_field: Some("1020-3040-5060-7089".into()),
        })
    );
}

#[test]
fn webhook_quirks_and_real_values() {
    let read = status_event(
        r#"{"type": "message-event", "type2": " read", "messageId_whatsapp": "wamid.HBgM",
            "fecha_lectura_usuario": "2026-11-26 15:30:00", "&messageId": "0e1add43-f91c-4e7c-8805-221ef6b27b98",
            "canal": "whatsapp", "extra": {"nested": [1, 2]}, "intentos": 3}"#,
    );
    assert_eq!(read.status, DeliveryStatus::Read);
    assert_eq!(
        read.message_id.as_str(),
        "0e1add43-f91c-4e7c-8805-221ef6b27b98"
    );
    assert_eq!(read.date.unwrap().to_rfc3339(), "2026-11-26T20:30:00+00:00");

    let failed = status_event(
        r#"{"type": "message-event", "type2": "failed", "code": 1002, "reason": "not on WhatsApp", "messageId": "m-1"}"#,
    );
    assert_eq!(failed.code, Some(1002));
    let failed = status_event(
        r#"{"type": "message-event", "type2": "failed", "code": "1010", "messageId": "m-1"}"#,
    );
    assert_eq!(failed.code, Some(1010));
    assert_eq!(
        failure_reason(failed.code.unwrap()),
        Some("invalid media URL")
    );

    let sent = status_event(
        r#"{"type": "message-event", "type2": " sent", "fecha_envio_por_whatsapp": "1795725000", "&messageId": "m-2"}"#,
    );
    assert_eq!(sent.date.unwrap().to_rfc3339(), "2026-11-26T20:30:00+00:00");
}

#[test]
fn webhook_garbage_is_malformed_and_other_json_is_unknown_shape() {
    for garbage in [&b"not json"[..], b"", b"{\"type\": ", b"\xff\xfe"] {
        let error = webhook::parse(garbage).unwrap_err();
        assert!(matches!(error, WebhookError::Malformed { .. }), "{error:?}");
        assert!(error.to_string().contains("not JSON"), "{error}");
    }
    for other in [
        r#"{"foo":1}"#,
        r#"[1, 2]"#,
        r#""hola""#,
        r#"{"type": "account-event", "type2": "sent", "messageId": "m"}"#,
        r#"{"type": "message-event", "type2": "clicked", "messageId": "m"}"#,
        r#"{"type": "message-event", "type2": "sent"}"#,
        r#"{"mobile": "57300222222"}"#,
    ] {
        let error = webhook::parse(other.as_bytes()).unwrap_err();
        assert!(
            matches!(error, WebhookError::UnknownShape { .. }),
            "{other}: {error:?}"
        );
    }
    let error = webhook::parse(br#"{"foo":1}"#).unwrap_err().to_string();
    assert!(error.contains("foo"), "{error}");
}

#[test]
fn delivery_status_orders_forward_and_serializes_lowercase() {
    use DeliveryStatus::*;
    assert!(Sent < Delivered && Delivered < Read);
    assert!(Failed.is_final() && !Read.is_final());
    assert_eq!(serde_json::to_string(&Delivered).unwrap(), r#""delivered""#);
    assert_eq!(
        serde_json::from_str::<DeliveryStatus>(r#""read""#).unwrap(),
        Read
    );
}
