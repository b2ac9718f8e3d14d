//! Hostile input: oversized and endless bodies, slow and idle clients, guessed tokens and
//! webhook secrets, redirecting notify endpoints, rule-file bombs, arbitrary bytes thrown at the
//! parsers, and a data folder that fills up. Each test fails if its protection is removed.

use super::engine::{eventually, sim_config, spawn_app, TestApp, API_TOKEN, RULES};
use proptest::prelude::*;
use recuerda::config::Config;
use recuerda::provider::{MediaUrl, Mobile};
use recuerda::rules::RuleSet;
use recuerda::secret::Secret;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- raw HTTP helpers ------------------------------------------------------------------------

fn addr(t: &TestApp) -> SocketAddr {
    t.app().addr
}

fn webhook_path(t: &TestApp) -> String {
    let url = t.app().webhook_url().expect("a webhook secret");
    let at = url.find("/webhook/").expect("webhook path");
    url[at..].to_string()
}

/// Reads what the server answers within `within`: the status of its first answer, or `None`
/// when it closed the connection (or went silent) without one.
async fn answer_status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(line) = text.lines().next().filter(|_| text.contains("\r\n")) {
            return line.split(' ').nth(1).and_then(|s| s.parse().ok());
        }
    }
}

/// How long until the server closes `stream` (reads EOF or an error), or `None` if it is still
/// open after `within`. Anything the server writes first (e.g. a 408) is skipped.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn reply_json(message_len: usize) -> String {
    json!({"mobile": "573001110001", "message": "a".repeat(message_len), "custom_field": "cita-X"})
        .to_string()
}

// ---- bodies over the limit -------------------------------------------------------------------

#[tokio::test]
async fn webhook_body_over_the_limit_is_413_before_it_is_read_even_when_chunked() {
    let t = spawn_app(RULES, sim_config(), |c| c.webhook.max_body_bytes = 4096).await;
    let path = webhook_path(&t);

    // A declared length over the limit: refused on the headers alone, no body ever sent (a
    // server that waited to buffer it would never answer).
    let mut s = TcpStream::connect(addr(&t)).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        answer_status(&mut s, Duration::from_secs(3)).await,
        Some(413)
    );

    // Chunked, no Content-Length, a body that never ends: cut once it passes the limit.
    let mut s = TcpStream::connect(addr(&t)).await.unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let body = reply_json(20_000);
    for piece in body.as_bytes().chunks(1000) {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    // No terminating `0` chunk: only a limit ends this request.
    assert_eq!(
        answer_status(&mut s, Duration::from_secs(3)).await,
        Some(413)
    );

    let engine = &t.app().engine;
    assert_eq!(engine.store.inbox_depth(), 0, "nothing of it was stored");
    assert!(engine.store.dead_letters().unwrap().is_empty());

    // Just under the limit is a normal reply.
    let ok = t
        .http
        .post(t.url(&path))
        .body(reply_json(3900))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    t.shutdown().await;
}

#[tokio::test]
async fn api_body_over_the_limit_is_413_before_it_is_read_even_when_chunked() {
    let t = spawn_app(RULES, sim_config(), |c| c.api.max_body_bytes = 4096).await;
    let mut s = TcpStream::connect(addr(&t)).await.unwrap();
    s.write_all(
        format!(
            "PUT /api/v1/appointments/Z1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        answer_status(&mut s, Duration::from_secs(3)).await,
        Some(413)
    );

    let mut s = TcpStream::connect(addr(&t)).await.unwrap();
    s.write_all(
        format!(
            "POST /api/v1/appointments/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let row = r#"{"id": "Z2", "mobile": "573001110001", "start": "2030-11-26T15:30:00-05:00"},"#;
    let open = r#"{"appointments":["#;
    s.write_all(format!("{:x}\r\n{open}\r\n", open.len()).as_bytes())
        .await
        .unwrap();
    for _ in 0..100 {
        s.write_all(format!("{:x}\r\n{row}\r\n", row.len()).as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(
        answer_status(&mut s, Duration::from_secs(3)).await,
        Some(413)
    );
    assert_eq!(t.app().engine.store.count_appointments(), 0);
    t.shutdown().await;
}

// ---- slow and idle clients -------------------------------------------------------------------

#[tokio::test]
async fn slow_and_idle_clients_are_cut_and_others_are_still_answered() {
    let t = spawn_app(RULES, sim_config(), |c| {
        c.http.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let limit = Duration::from_secs(3);

    // Slowloris: headers a byte at a time, forever. Several at once.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let stream = TcpStream::connect(addr(&t)).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
            for b in head.bytes().chain(std::iter::repeat(b'a')) {
                if write.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        let reader = tokio::spawn(async move {
            let started = Instant::now();
            let mut chunk = [0u8; 512];
            loop {
                match tokio::time::timeout(Duration::from_secs(3), read.read(&mut chunk)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    Ok(Ok(_)) => continue,
                }
            }
        });
        slow.push((writer, reader));
    }

    // Connected, says nothing.
    let mut idle = TcpStream::connect(addr(&t)).await.unwrap();
    // One request, then the kept-alive connection sits idle.
    let mut kept = TcpStream::connect(addr(&t)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer_status(&mut kept, limit).await, Some(200));

    // Meanwhile everyone else is answered promptly.
    for _ in 0..5 {
        let started = Instant::now();
        let r = t.http.get(t.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a normal request waited {:?} behind slow clients",
            started.elapsed()
        );
    }

    assert!(
        closed_after(&mut idle, limit).await.is_some(),
        "an idle connection was still open after {limit:?}"
    );
    assert!(
        closed_after(&mut kept, limit).await.is_some(),
        "an idle kept-alive connection was still open after {limit:?}"
    );
    for (writer, reader) in slow {
        let closed = reader.await.unwrap();
        writer.abort();
        assert!(
            closed.is_some(),
            "a client sending headers a byte at a time was still connected after {limit:?}"
        );
    }
    // A client of its own: the test's shared one may hold a connection from start-up that
    // the server, by the short idle limit set here, closes just as it is reused.
    let r = reqwest::Client::new()
        .get(t.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    t.shutdown().await;
}

// ---- tokens and secrets ----------------------------------------------------------------------

#[tokio::test]
async fn api_without_or_with_a_wrong_token_is_401_with_one_body() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let url = t.url("/api/v1/replies");
    let near: Vec<String> = vec![
        String::new(),
        API_TOKEN[..API_TOKEN.len() - 1].to_string(),
        format!("{API_TOKEN}x"),
        API_TOKEN.to_uppercase(),
        format!(" {API_TOKEN}"),
        "x".repeat(4000),
    ];
    let mut bodies = Vec::new();
    let r = t.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no Authorization header");
    bodies.push(r.text().await.unwrap());
    for header in near
        .iter()
        .map(|n| format!("Bearer {n}"))
        .chain([API_TOKEN.to_string(), format!("Basic {API_TOKEN}")])
    {
        let r = t
            .http
            .get(&url)
            .header("Authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "`Authorization: {header}`");
        bodies.push(r.text().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "401 bodies differ: {bodies:?}"
    );
    assert!(!bodies[0].contains(API_TOKEN));
    let ok = t
        .http
        .get(&url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // The comparison itself is `subtle`'s constant-time one; its answers:
    let secret = Secret::new(API_TOKEN);
    assert!(secret.matches(API_TOKEN));
    assert!(near.iter().all(|n| !secret.matches(n)));
    t.shutdown().await;
}

#[tokio::test]
async fn api_without_a_configured_token_refuses_everyone_even_an_empty_bearer() {
    let t = spawn_app(RULES, sim_config(), |c| c.api.token = None).await;
    for header in ["Bearer ", "Bearer", ""] {
        let r = t
            .http
            .get(t.url("/api/v1/appointments/A1"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "`Authorization: {header}`");
    }
    t.shutdown().await;
}

#[test]
fn generated_webhook_secret_is_long_random_private_and_kept() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let generate = |dir: &std::path::Path| {
        let mut c = Config {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        c.webhook.secret = None;
        recuerda::app::ensure_webhook_secret(&mut c).unwrap();
        c.webhook.secret.unwrap().expose().to_string()
    };
    let a = generate(one.path());
    let b = generate(two.path());
    assert!(a.len() >= 32, "{} characters", a.len());
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "URL-safe");
    assert_ne!(a, b, "two installations get different secrets");
    let distinct: std::collections::BTreeSet<char> = a.chars().collect();
    assert!(
        distinct.len() > 16,
        "looks random: {} distinct",
        distinct.len()
    );
    assert_eq!(generate(one.path()), a, "kept across restarts");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(one.path().join("webhook_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner reads it: {mode:o}");
    }
    // A short secret left in the file is replaced, not trusted.
    std::fs::write(one.path().join("webhook_secret"), "short").unwrap();
    let c = generate(one.path());
    assert!(c.len() >= 32 && c != "short");
}

#[tokio::test]
async fn wrong_webhook_secrets_of_any_shape_get_the_answer_of_a_random_path() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let path = webhook_path(&t);
    let secret = path.trim_start_matches("/webhook/").to_string();
    let mut flipped = secret.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    let guesses = [
        "/definitely/not/here".to_string(),
        "/webhook".to_string(),
        "/webhook/".to_string(),
        "/webhook/x".to_string(),
        format!("/webhook/{}", &secret[..secret.len() - 1]),
        format!("/webhook/{}", &secret[..8]),
        format!("/webhook/{secret}x"),
        format!("/webhook/{flipped}"),
        format!("/webhook/{}", secret.to_uppercase()),
        format!("/webhook/{}", "z".repeat(2000)),
        format!("{path}/extra"),
    ];
    let body = reply_json(5);
    let mut answers = Vec::new();
    for guess in &guesses {
        let r = t
            .http
            .post(t.url(guess))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        answers.push((guess.clone(), r.status().as_u16(), r.text().await.unwrap()));
    }
    // Another method on the right path tells no more than a wrong path does.
    let r = t.http.get(t.url(&path)).send().await.unwrap();
    answers.push((
        "GET secret".into(),
        r.status().as_u16(),
        r.text().await.unwrap(),
    ));
    let (_, status, text) = answers[0].clone();
    assert_eq!(status, 404);
    for (guess, s, b) in &answers {
        assert_eq!(
            (*s, b.as_str()),
            (status, text.as_str()),
            "`{}` answers differently from a random path",
            guess.replace(&secret, "<secret>")
        );
    }
    let engine = &t.app().engine;
    assert_eq!(engine.store.inbox_depth(), 0);
    assert!(t.get("/api/v1/replies").await["replies"]
        .as_array()
        .unwrap()
        .is_empty());
    t.shutdown().await;
}

// ---- notify and media URLs -------------------------------------------------------------------

#[test]
fn notify_and_media_urls_are_http_or_https_only() {
    for url in [
        "file:///etc/passwd",
        "ftp://clinica.example/hook",
        "gopher://x",
        "javascript:alert(1)",
        "//clinica.example/hook",
        "clinica.example/hook",
    ] {
        let yaml = format!("notify:\n  x: {{url: \"{url}\"}}\n");
        let err = Config::from_yaml(&yaml, None, &BTreeMap::new())
            .expect_err(&format!("`{url}` must be refused"));
        assert!(err.to_string().contains("notify.x.url"), "{err}");
        assert!(MediaUrl::parse(url).is_err(), "media `{url}`");
    }
    assert!(Config::from_yaml(
        "notify:\n  x: {url: \"https://clinica.example/hook\"}\n",
        None,
        &BTreeMap::new()
    )
    .is_ok());
    assert!(MediaUrl::parse("https://clinica.example/a.pdf").is_ok());
}

#[test]
fn notify_targets_come_only_from_the_config() {
    let config = Config::default();
    for target in ["https://evil.example/steal", "gerencia"] {
        let rules = format!(
            "rules:\n  - name: fuga\n    trigger: {{appointment: created}}\n    actions:\n      - notify: \"{target}\"\n"
        );
        let err = RuleSet::load_sources(&[], &[(PathBuf::from("a.yaml"), rules)], &config)
            .err()
            .unwrap_or_else(|| panic!("a rule notifying `{target}` must be refused"));
        let text: Vec<String> = err.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(
            text.iter().any(|d| d.contains("notify")),
            "names the notify problem: {text:?}"
        );
    }
}

#[tokio::test]
async fn notify_redirect_is_a_failure_and_its_location_is_never_requested() {
    use axum::routing::any;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Where the redirect points: it must never be asked.
    let stolen = Arc::new(AtomicUsize::new(0));
    let hits = stolen.clone();
    let elsewhere = axum::Router::new().fallback(any(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { "thanks" }
    }));
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = l2.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l2, elsewhere).await });
    // The configured endpoint answers 302 to it.
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let endpoint = axum::Router::new().fallback(any(move || {
        a.fetch_add(1, Ordering::SeqCst);
        async move {
            (
                axum::http::StatusCode::FOUND,
                [("Location", format!("http://{other}/steal"))],
            )
        }
    }));
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = l1.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l1, endpoint).await });

    let rules = "rules:\n  - name: aviso\n    trigger: {appointment: created}\n    actions:\n      - notify: recepcion\n";
    let t = spawn_app(rules, sim_config(), |c| {
        c.notify.insert(
            "recepcion".into(),
            recuerda::config::NotifyEndpoint {
                url: format!("http://{hook}/hooks/recuerda"),
                timeout: Duration::from_secs(2),
            },
        );
    })
    .await;
    let r = t
        .put_appointment(
            "N1",
            json!({"mobile": "573001110060", "start": "2030-11-26T15:30:00-05:00"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let entry = eventually("the notify is recorded as failed", || async {
        t.app()
            .engine
            .store
            .outbox_entries()
            .filter_map(Result::ok)
            .find(|e| e.rule == "aviso" && e.status.as_str() == "failed")
    })
    .await;
    let error = entry.error.unwrap_or_default();
    assert!(
        error.contains("302") && error.contains("notify.recepcion"),
        "{error}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once, not retried");
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "the Location was requested"
    );
    t.shutdown().await;
}

// ---- rule files ------------------------------------------------------------------------------

async fn reload(t: &TestApp) -> (u16, Value) {
    let r = t
        .http
        .post(t.url("/api/v1/rules/reload"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn rule_bombs_are_refused_quickly_and_the_last_good_rules_keep_running() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let rules_file = t.config.rules_dir.join("reglas.yaml");
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            p = (b'a' + i - 1) as char
        ));
    }
    let deep = format!("rules: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("rules: []\n# {}\n", "x".repeat(3 * 1024 * 1024));
    // Under the size limit, but 300,000 values.
    let flat = format!("rules: [{}]\n", "a,".repeat(300_000));
    let cases = [
        ("alias bomb", bomb, "expands to more than"),
        ("deep nesting", deep, "nesting deeper than"),
        ("many values", flat, "expands to more than"),
        ("huge file", huge, "byte limit"),
    ];
    for (i, (what, text, expected)) in cases.iter().enumerate() {
        std::fs::write(&rules_file, text).unwrap();
        let started = Instant::now();
        let (status, body) = reload(&t).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: refusing took {:?}",
            started.elapsed()
        );
        assert_eq!(status, 400, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{what}: {error}");
        assert!(
            error.contains("reglas.yaml"),
            "{what} names the file: {error}"
        );
        let health: Value = crate::json_of(t.http.get(t.url("/healthz"))).await;
        assert!(
            health["rules"]["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(expected)),
            "{what}: {health}"
        );
        // The previous rules still fire.
        let id = format!("R{i}");
        let mobile = format!("57300111007{i}");
        let r = t
            .put_appointment(
                &id,
                json!({"mobile": mobile, "start": "2030-11-26T15:30:00-05:00", "paciente": "Ana"}),
            )
            .await;
        assert_eq!(r.status(), 201);
        eventually(&format!("{what}: the old rules still send"), || async {
            t.sim
                .sends()
                .iter()
                .any(|s| s.mobile == mobile && s.template_id == 990)
                .then_some(())
        })
        .await;
    }
    t.shutdown().await;
}

// ---- property tests: no input makes the parsers panic ----------------------------------------

/// JSON values shaped like the provider's callbacks, with the keys it uses and wrong types in
/// them, so the parser's branches are reached (pure random bytes rarely are JSON).
fn webhook_like() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            " sent",
            "sent",
            " delivered",
            "read",
            " read",
            "failed",
            "message-event",
            "1005",
            "",
            "2030-01-01 10:00:00",
        ])
        .prop_map(|s| json!(s)),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let keys = prop::sample::select(vec![
        "type",
        "type2",
        "&messageId",
        "messageId",
        "messageId_whatsapp",
        "code",
        "reason",
        "mobile",
        "message",
        "custom_field",
        "fecha_envio_por_whatsapp",
        "fecha_lectura_usuario",
    ]);
    prop::collection::btree_map(keys, value, 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn rules_like() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "rules:\n",
        "  - name: r\n",
        "    trigger: {appointment: created}\n",
        "    trigger: {cron: \"0 8 * * *\"}\n",
        "    trigger: {before: 1d}\n",
        "    trigger:\n      reply: {text: \"(\"}\n",
        "    actions:\n",
        "      - send: {template: 990}\n",
        "      - send: {template: 990, variables: [\"{{#if}}\"]}\n",
        "      - set_state: x\n",
        "      - notify: recepcion\n",
        "    where: {appointment.sede: norte}\n",
        "&a [*a]\n",
        "*b\n",
        "- [\n",
        "{{\n",
        "\t",
        ": :\n",
        "---\n",
        "  ",
        "'",
        "\"",
        "#",
        "\u{0}",
        "ñ",
    ]);
    prop::collection::vec(pieces, 0..14).prop_map(|v| v.concat())
}

const TEMPLATE_990: &str =
    "id: 990\nname: Recordatorio\nbody: \"Hola {1}\"\nvariables: [\"{{appointment.paciente}}\"]\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn webhook_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = recuerda::provider::webhook::parse(&body);
    }

    #[test]
    fn webhook_parser_never_panics_on_callback_shaped_json(value in webhook_like()) {
        let _ = recuerda::provider::webhook::parse(value.to_string().as_bytes());
    }

    #[test]
    fn mobile_normalizer_never_panics(input in "\\PC{0,24}|[+0-9 ()\\-]{0,24}") {
        if let Ok(m) = Mobile::parse(&input) {
            // What it accepts is normalized: digits only, and parsing it again keeps it.
            prop_assert!(m.as_str().chars().all(|c| c.is_ascii_digit()));
            prop_assert_eq!(Mobile::parse(m.as_str()).map(|n| n.as_str().to_string()).ok(), Some(m.as_str().to_string()));
        }
    }

    #[test]
    fn rule_loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let config = Config::default();
        let _ = RuleSet::load_sources(&[], &[(PathBuf::from("a.yaml"), text)], &config);
    }

    #[test]
    fn rule_loader_never_panics_on_rule_shaped_text(text in rules_like()) {
        let config = Config::default();
        let templates = [(PathBuf::from("990.yaml"), TEMPLATE_990.to_string())];
        let _ = RuleSet::load_sources(&templates, &[(PathBuf::from("a.yaml"), text)], &config);
    }
}

// ---- disk trouble ----------------------------------------------------------------------------

/// A small tmpfs mounted for one test, unmounted (lazily, so even a panic cannot leave it busy)
/// on drop. Mounting needs root or CAP_SYS_ADMIN: `None` where it is not permitted.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler file");
        let block = vec![0x5au8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_makes_the_webhook_answer_503_and_health_and_log_say_why() {
    use super::torture::{free_port, wait_healthy, LoggedChild};
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!(
            "SKIPPED full_disk_…: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); \
             this test runs where it can"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_folder_only(dir.path());
    let port = free_port();
    let secret = Secret::generate(40);
    let config_path = dir.path().join("recuerda.yaml");
    std::fs::write(
        &config_path,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nrules_dir: rules\ntemplates_dir: templates\n\
             provider:\n  base_url: http://127.0.0.1:9/bot/chat_wa/ws\n  login: x@example.com\n  token: t\n\
             webhook:\n  secret: {}\napi:\n  token: {API_TOKEN}\n",
            disk.path().join("data").display(),
            secret.expose()
        ),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let hook = format!("{base}/webhook/{}", secret.expose());
    let mut child = LoggedChild::spawn(&config_path, "info");
    wait_healthy(&http, &base).await;
    let before = http
        .post(&hook)
        .body(
            json!({"mobile": "573001110090", "message": "antes", "custom_field": "cita-D"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200, "a healthy store takes replies");

    let filler = disk.fill();
    // Replies while the disk is full: none may be acknowledged, since none can be on disk.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = http
            .post(&hook)
            .body(
                json!({"mobile": "573001110090", "message": format!("lleno {i} {}", "x".repeat(2000)), "custom_field": "cita-D"})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 503),
        "a full disk must answer 503 so the provider retries: {statuses:?}"
    );
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert!(
        health["store"]
            .as_str()
            .is_some_and(|s| s.contains("cannot write") && s.contains("disk space")),
        "{health}"
    );
    child.kill();
    let log = child.stderr();
    assert!(
        log.contains("No space left on device") || log.contains("os error 28"),
        "the log says why:\n{log}"
    );

    // Space again: the store reopens cleanly, holds the reply acknowledged before, and takes
    // the provider's retries.
    std::fs::remove_file(filler).unwrap();
    let mut child = LoggedChild::spawn(&config_path, "warn");
    wait_healthy(&http, &base).await;
    let retry = http
        .post(&hook)
        .body(json!({"mobile": "573001110090", "message": "lleno 0 reintento", "custom_field": "cita-D"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200);
    let replies: Value = eventually("both replies are listed", || async {
        let v: Value = crate::try_json_of(
            http.get(format!("{base}/api/v1/replies"))
                .bearer_auth(API_TOKEN),
        )
        .await?;
        (v["replies"].as_array()?.len() >= 2).then_some(v)
    })
    .await;
    let texts: Vec<&str> = replies["replies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(texts.contains(&"antes"), "{texts:?}");
    assert!(texts.contains(&"lleno 0 reintento"), "{texts:?}");
    child.kill();
}

fn write_folder_only(dir: &std::path::Path) {
    super::engine::write_folder(dir, RULES);
}
