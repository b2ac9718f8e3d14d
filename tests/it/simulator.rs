//! The provider simulator over real HTTP on loopback: codes, balance, templates, callbacks in
//! the seed's exact shape, scripted patients, faults, the control API and shutdown.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use recuerda::simulator::{
    CallbackKind, DeliveryEvent, Fault, SimConfig, SimHandle, Simulator, PREFIX,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LOGIN: &str = "clinica@example.co";
const TOKEN: &str = "tok-0123456789";
const MOBILE: &str = "573102334455";
const FAILING: &str = "573009990000";
const PATIENT: &str = "573001112233";
const NEVER_READS: &str = "573004445566";

/// Tiny delays so a whole timeline plays in well under a second.
const CONFIG: &str = r#"
accounts:
  - {login: clinica@example.co, token: tok-0123456789, balance: 3}
  - {login: sin-chatbot@example.co, token: t2, balance: 3, chatbot: false}
  - {login: sin-plantillas@example.co, token: t3, balance: 3, templates: []}
  - {login: sin-saldo@example.co, token: t4, balance: 0}
templates:
  - {id: 990, name: Recordatorio, body: "Hola *{1}*, cita con *{2}* el *{3}* a las *{4}*."}
  - {id: 995, name: Aviso, body: "{1}"}
  - {id: 996, name: Gracias, body: "¡Gracias!"}
  - {id: 997, name: Pendiente, body: "Hola {1}", status: pendiente}
delays: {sent: 10ms, delivered: 30ms, read: 50ms, reply: 70ms}
failures:
  573009990000: 1005
patients:
  "573001112233":
    replies:
      - {text: "1", delay: 60ms}
      - {text: "2"}
  573004445566:
    read: false
"#;

fn config() -> SimConfig {
    match SimConfig::from_yaml(CONFIG, "test config") {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

async fn start(config: SimConfig) -> SimHandle {
    Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// POSTs a multipart send, as the provider documents it.
async fn send(sim: &SimHandle, fields: &[(&str, &str)]) -> Value {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    let response = client()
        .post(format!("{}/send/", sim.base_url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The happy send's fields, with `overrides` replacing or adding some (an empty value
/// removes the field).
fn fields<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("login", LOGIN),
        ("token", TOKEN),
        ("mobile", MOBILE),
        ("id_template", "990"),
        (
            "template_variables",
            "[Carlos] [Dra. Gómez] [jueves 26] [3:30 p. m.]",
        ),
        ("custom_field", "cita-42"),
    ];
    for (name, value) in overrides {
        fields.retain(|(n, _)| n != name);
        if !value.is_empty() {
            fields.push((name, value));
        }
    }
    fields
}

async fn post_form(sim: &SimHandle, path: &str, fields: &[(&str, &str)]) -> Value {
    crate::json_of(
        client()
            .post(format!("{}/{path}/", sim.base_url()))
            .form(fields),
    )
    .await
}

/// Polls `done` every 10 ms for up to 2 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A webhook receiver on port 0: keeps every JSON body; answers the queued statuses first,
/// then 200.
struct Receiver {
    url: String,
    /// As received, text: the key order on the wire.
    bodies: Arc<Mutex<Vec<String>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

#[derive(Clone)]
struct ReceiverState {
    bodies: Arc<Mutex<Vec<String>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        async fn hook(State(state): State<ReceiverState>, body: String) -> StatusCode {
            state.bodies.lock().unwrap().push(body);
            let status = state.statuses.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
        let state = ReceiverState {
            bodies: Arc::default(),
            statuses: Arc::default(),
        };
        let app = Router::new()
            .route("/webhook/{secret}", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/webhook/s3cr3t-path"),
            bodies: state.bodies,
            statuses: state.statuses,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        let raw = self.bodies.lock().unwrap().clone();
        raw.iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }

    fn raw(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_send_code_is_reachable_as_documented() {
    let sim = start(config()).await;
    let check = |overrides: &'static [(&'static str, &'static str)], code: u64| {
        let sim = sim.clone();
        async move {
            let answer = send(&sim, &fields(overrides)).await;
            assert_eq!(answer["code"], code, "{overrides:?} → {answer}");
            assert!(answer["status"].is_string(), "{answer}");
        }
    };
    check(&[("token", "wrong")], 2).await;
    check(&[("token", "")], 2).await;
    check(&[("login", "nadie@example.co")], 2).await;
    check(&[("login", "sin-chatbot@example.co"), ("token", "t2")], 3).await;
    check(&[("mobile", "3102334455")], 4).await;
    check(&[("mobile", "5731023344556")], 4).await;
    check(&[("mobile", "58310233445")], 4).await;
    check(&[("mobile", "57310233445x")], 4).await;
    check(&[("login", "sin-saldo@example.co"), ("token", "t4")], 5).await;
    check(&[("id_template", "")], 6).await;
    check(&[("template_variables", "")], 6).await;
    check(&[("id_template", "995"), ("template_variables", "[ ]")], 6).await;
    check(&[("id_template", "12345")], 7).await;
    check(&[("id_template", "abc")], 7).await;
    check(&[("id_template", "997"), ("template_variables", "[x]")], 7).await;
    check(
        &[("login", "sin-plantillas@example.co"), ("token", "t3")],
        7,
    )
    .await;
    check(&[("template_variables", "[a] [b] [c]")], 8).await;
    check(&[("id_template", "996"), ("template_variables", "[x]")], 8).await;
    check(&[("template_variables", "Carlos Dra jueves 3pm")], 8).await;
    check(&[("template_variables", "[a] [b] [c] [d [e]]")], 8).await;
    assert!(
        sim.sends().is_empty(),
        "no refused send is recorded as sent"
    );
    assert_eq!(sim.balance(LOGIN), Some(3), "refusals debit nothing");

    let text = client()
        .post(format!("{}/send", sim.base_url()))
        .multipart(
            fields(&[])
                .into_iter()
                .fold(reqwest::multipart::Form::new(), |form, (name, value)| {
                    form.text(name, value)
                }),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with(r#"{"code":1,"status":"mensaje enviado","messageId":""#),
        "the provider's key order: {text}"
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    let id = answer["messageId"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    let sends = sim.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].message_id, id);
    assert_eq!(sends[0].template_id, 990);
    assert_eq!(
        sends[0].variables,
        ["Carlos", "Dra. Gómez", "jueves 26", "3:30 p. m."]
    );
    assert_eq!(
        sends[0].text,
        "Hola *Carlos*, cita con *Dra. Gómez* el *jueves 26* a las *3:30 p. m.*."
    );
    assert_eq!(sends[0].custom_field.as_deref(), Some("cita-42"));

    // A template without placeholders needs no variables.
    let answer = send(
        &sim,
        &fields(&[("id_template", "996"), ("template_variables", "")]),
    )
    .await;
    assert_eq!(answer["code"], 1, "{answer}");
    sim.shutdown().await;
}

#[tokio::test]
async fn sends_debit_one_unit_until_the_balance_runs_out() {
    let sim = start(config()).await;
    let balance = post_form(&sim, "balance", &[("login", LOGIN), ("token", TOKEN)]).await;
    assert_eq!(balance, json!({"balance": "3", "status": "success"}));
    for _ in 0..3 {
        assert_eq!(send(&sim, &fields(&[])).await["code"], 1);
    }
    assert_eq!(send(&sim, &fields(&[])).await["code"], 5);
    let balance = post_form(&sim, "balance", &[("login", LOGIN), ("token", TOKEN)]).await;
    assert_eq!(balance["balance"], "0");

    sim.set_balance(LOGIN, 1).unwrap();
    assert_eq!(send(&sim, &fields(&[])).await["code"], 1);
    assert_eq!(sim.balance(LOGIN), Some(0));
    assert!(sim.set_balance("nadie", 1).is_err());

    let refused = post_form(&sim, "balance", &[("login", LOGIN), ("token", "x")]).await;
    assert_eq!(refused["code"], 2);
    let refused = post_form(
        &sim,
        "balance",
        &[("login", "sin-chatbot@example.co"), ("token", "t2")],
    )
    .await;
    assert_eq!(refused["code"], 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn template_list_has_the_documented_shape() {
    let sim = start(config()).await;
    let listed = post_form(&sim, "template", &[("login", LOGIN), ("token", TOKEN)]).await;
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0]["nombre_plantilla"], "Recordatorio");
    assert_eq!(
        listed[0]["plantilla_aprobada"],
        "Hola *{1}*, cita con *{2}* el *{3}* a las *{4}*."
    );
    assert_eq!(listed[0]["status"], "success");
    assert_eq!(listed[0]["id_template"], 990);
    assert_eq!(listed[3]["estado"], "pendiente");

    let none = post_form(
        &sim,
        "template",
        &[("login", "sin-plantillas@example.co"), ("token", "t3")],
    )
    .await;
    assert_eq!(none["code"], 4);
    let refused = post_form(&sim, "template", &[("login", LOGIN)]).await;
    assert_eq!(refused["code"], 2);
    let refused = post_form(
        &sim,
        "template",
        &[("login", "sin-chatbot@example.co"), ("token", "t2")],
    )
    .await;
    assert_eq!(refused["code"], 3);

    // Paths without the trailing slash work too; a wrong path says what exists.
    let response = client()
        .post(format!("{}/template", sim.base_url()))
        .form(&[("login", LOGIN), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(response.json::<Value>().await.unwrap().is_array());
    let response = client()
        .post(format!("{}/send/", sim.origin()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains(PREFIX));
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_arrive_in_the_seeds_exact_shape_and_order() {
    let receiver = Receiver::start().await;
    let sim = start(config()).await;
    sim.set_webhook_url(Some(receiver.url.clone())).unwrap();
    let answer = send(&sim, &fields(&[])).await;
    let id = answer["messageId"].as_str().unwrap().to_owned();
    eventually("sent, delivered, read", || receiver.count() >= 3).await;
    let bodies = receiver.bodies();

    let delivery_keys = |date: &'static str| {
        BTreeSet::from(["type", "type2", "messageId_whatsapp", date, "&messageId"])
    };
    for (body, type2, date) in [
        (&bodies[0], " sent", "fecha_envio_por_whatsapp"),
        (&bodies[1], " delivered", "fecha_envio_por_whatsapp"),
        (&bodies[2], " read", "fecha_lectura_usuario"),
    ] {
        assert_eq!(keys(body), delivery_keys(date), "{body}");
        assert_eq!(body["type"], "message-event");
        assert_eq!(body["type2"], type2);
        assert_eq!(body["&messageId"], id.as_str());
        assert!(body["messageId_whatsapp"]
            .as_str()
            .unwrap()
            .starts_with("wamid."));
        let when = body[date].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(when, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{when}"
        );
    }
    assert_eq!(
        bodies[0]["messageId_whatsapp"],
        bodies[2]["messageId_whatsapp"]
    );
    let raw = receiver.raw();
    assert!(
        raw[0].starts_with(r#"{"type":"message-event","type2":" sent","messageId_whatsapp":"#),
        "the provider's key order: {}",
        raw[0]
    );
    assert!(
        raw[2].ends_with(&format!(r#""&messageId":"{id}"}}"#)),
        "{}",
        raw[2]
    );

    let callbacks = sim.callbacks();
    assert_eq!(callbacks.len(), 3);
    assert!(callbacks.iter().all(|c| c.delivered() && c.attempt == 1));
    assert_eq!(
        callbacks.iter().map(|c| c.kind).collect::<Vec<_>>(),
        [
            CallbackKind::Sent,
            CallbackKind::Delivered,
            CallbackKind::Read
        ]
    );
    assert!(
        callbacks[0].target.ends_with("/webhook/***"),
        "secret masked"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_mobile_gets_failed_with_a_string_code() {
    let receiver = Receiver::start().await;
    let sim = start(config()).await;
    sim.set_webhook_url(Some(receiver.url.clone())).unwrap();
    let answer = send(&sim, &fields(&[("mobile", FAILING)])).await;
    assert_eq!(answer["code"], 1, "accepted first, failed later");
    let id = answer["messageId"].as_str().unwrap().to_owned();
    eventually("sent, failed", || receiver.count() >= 2).await;
    // Nothing more follows a failure.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0]["type2"], " sent");
    let failed = &bodies[1];
    assert_eq!(
        keys(failed),
        BTreeSet::from(["type", "type2", "code", "reason", "messageId"])
    );
    assert_eq!(failed["type2"], "failed");
    assert_eq!(failed["code"], "1005");
    assert_eq!(failed["messageId"], id.as_str());
    assert!(failed["reason"].as_str().unwrap().contains("plantilla"));

    // Media of a kind the provider refuses fails with 1010.
    let answer = send(&sim, &fields(&[("media", "https://x.co/virus.exe")])).await;
    assert_eq!(answer["code"], 1);
    eventually("1010", || {
        receiver.bodies().iter().any(|b| b["code"] == "1010")
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn scripted_patients_reply_echoing_the_custom_field() {
    let receiver = Receiver::start().await;
    let sim = start(config()).await;
    sim.set_balance(LOGIN, 10).unwrap();
    sim.set_webhook_url(Some(receiver.url.clone())).unwrap();
    let replies = |receiver: &Receiver| -> Vec<Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b.get("type").is_none())
            .collect()
    };

    send(
        &sim,
        &fields(&[("mobile", PATIENT), ("custom_field", "cita-1")]),
    )
    .await;
    eventually("first reply", || replies(&receiver).len() == 1).await;
    send(
        &sim,
        &fields(&[("mobile", PATIENT), ("custom_field", "cita-2")]),
    )
    .await;
    eventually("second reply", || replies(&receiver).len() == 2).await;
    let got = replies(&receiver);
    assert_eq!(
        got[0],
        json!({"mobile": PATIENT, "message": "1", "custom_field": "cita-1"})
    );
    assert_eq!(
        got[1],
        json!({"mobile": PATIENT, "message": "2", "custom_field": "cita-2"})
    );

    // A reply scripted at runtime answers the next send to that mobile.
    sim.script_reply(MOBILE, "sí, confirmo", Some(Duration::from_millis(5)))
        .unwrap();
    assert!(sim.script_reply("123", "x", None).is_err());
    send(&sim, &fields(&[("custom_field", "cita-3")])).await;
    eventually("runtime-scripted reply", || replies(&receiver).len() == 3).await;
    assert_eq!(replies(&receiver)[2]["custom_field"], "cita-3");
    assert_eq!(replies(&receiver)[2]["message"], "sí, confirmo");

    // A patient who never reads: sent and delivered, never read.
    let answer = send(&sim, &fields(&[("mobile", NEVER_READS)])).await;
    let id = answer["messageId"].as_str().unwrap().to_owned();
    let about = |receiver: &Receiver| -> Vec<Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b["&messageId"] == id.as_str())
            .collect()
    };
    eventually("delivered", || about(&receiver).len() == 2).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(about(&receiver).len(), 2, "no read event");
    sim.shutdown().await;
}

#[tokio::test]
async fn events_and_replies_can_be_pushed_by_hand_in_any_order() {
    let receiver = Receiver::start().await;
    let mut config = config();
    config.delays.sent = Duration::from_secs(60); // only hand-pushed events here
    config.delays.delivered = Duration::from_secs(60);
    config.delays.read = Duration::from_secs(60);
    let sim = start(config).await;
    assert!(matches!(
        sim.reply(MOBILE, "hola", "x").await,
        Err(recuerda::simulator::SimError::NoWebhook)
    ));
    sim.set_webhook_url(Some(receiver.url.clone())).unwrap();
    let id = send(&sim, &fields(&[])).await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();

    for event in [
        DeliveryEvent::Read,
        DeliveryEvent::Delivered,
        DeliveryEvent::Read,
    ] {
        let record = sim.push_event(&id, event, None).await.unwrap();
        assert!(record.delivered());
    }
    sim.push_event(&id, DeliveryEvent::Failed, Some(1011))
        .await
        .unwrap();
    let record = sim.reply("57300222222", "Hola", "cita-42").await.unwrap();
    assert_eq!(record.kind, CallbackKind::Reply);
    let bodies = receiver.bodies();
    let type2: Vec<_> = bodies.iter().map(|b| b["type2"].clone()).collect();
    assert_eq!(
        type2,
        [
            json!(" read"),
            json!(" delivered"),
            json!(" read"),
            json!("failed"),
            Value::Null
        ]
    );
    assert_eq!(bodies[3]["code"], "1011");
    assert_eq!(bodies[4]["mobile"], "57300222222", "11 digits pass");

    // Over HTTP as well.
    let control = sim.control_url();
    let response = client()
        .post(format!("{control}/messages/{id}/events"))
        .json(&json!({"kind": "delivered"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .post(format!("{control}/patients/{MOBILE}/reply"))
        .json(&json!({"text": "2", "custom_field": "cita-42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let record: Value = response.json().await.unwrap();
    assert_eq!(
        record["message_id"],
        id.as_str(),
        "tied to the message answered"
    );
    assert_eq!(receiver.count(), 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_are_retried_on_5xx_and_every_attempt_recorded() {
    let receiver = Receiver::start().await;
    receiver.statuses.lock().unwrap().extend([500, 503]);
    let sim = start(config()).await;
    sim.set_webhook_url(Some(receiver.url.clone())).unwrap();
    let record = sim
        .push_event("some-id", DeliveryEvent::Sent, None)
        .await
        .unwrap();
    assert_eq!(record.attempt, 3);
    assert_eq!(record.status, Some(200));
    let statuses: Vec<_> = sim.callbacks().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);

    // A receiver that is not there: connection errors, retried, then given up.
    sim.set_webhook_url(Some("http://127.0.0.1:9/webhook/x".into()))
        .unwrap();
    let record = sim
        .push_event("some-id", DeliveryEvent::Sent, None)
        .await
        .unwrap();
    assert_eq!(record.attempt, 4);
    assert!(
        record.status.is_none() && record.error.is_some(),
        "{record:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_are_consumed_in_order_and_behave_as_documented() {
    let sim = start(config()).await;
    sim.push_fault(Fault::HttpStatus {
        status: 503,
        body: "mantenimiento".into(),
        retry_after: Some(2),
    });
    sim.push_fault(Fault::Garbage);
    sim.push_fault(Fault::Code { code: 5 });
    let multipart = || {
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields(&[]) {
            form = form.text(name, value);
        }
        form
    };
    let url = format!("{}/send/", sim.base_url());

    let response = client()
        .post(&url)
        .multipart(multipart())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(response.text().await.unwrap(), "mantenimiento");

    let response = client()
        .post(&url)
        .multipart(multipart())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .starts_with("<!DOCTYPE html>"));

    assert_eq!(send(&sim, &fields(&[])).await["code"], 5);
    assert!(sim.sends().is_empty(), "faulted requests are not sends");
    assert_eq!(sim.balance(LOGIN), Some(3), "nor debited");
    assert_eq!(send(&sim, &fields(&[])).await["code"], 1, "queue used up");

    let requests = sim.requests();
    let faults: Vec<_> = requests.iter().map(|r| r.fault.clone()).collect();
    assert_eq!(
        faults,
        [
            Some("http_status 503".into()),
            Some("garbage".into()),
            Some("code 5".into()),
            None
        ]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hang_times_out_the_client_and_a_drop_closes_the_connection() {
    let sim = start(config()).await;
    let url = format!("{}/send/", sim.base_url());
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    sim.push_fault(Fault::Hang {
        duration: Duration::from_secs(5),
        accepted: false,
    });
    let error = impatient
        .post(&url)
        .form(&fields(&[]))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(sim.requests().len(), 1, "recorded once read");
    assert_eq!(sim.requests()[0].http_status, None);

    sim.push_fault(Fault::Drop { accepted: false });
    let started = std::time::Instant::now();
    let error = impatient
        .post(&url)
        .form(&fields(&[]))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_timeout(), "closed, not timed out: {error:?}");
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(sim.sends().is_empty());
    assert_eq!(sim.balance(LOGIN), Some(3));

    // "The request left, the answer was lost": processed, debited, but unanswered.
    sim.push_fault(Fault::Drop { accepted: true });
    let error = impatient
        .post(&url)
        .form(&fields(&[]))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(sim.sends().len(), 1);
    assert_eq!(sim.balance(LOGIN), Some(2));
    let last = sim.requests().pop().unwrap();
    assert_eq!(last.code, Some(1));
    assert_eq!(
        last.message_id.as_deref(),
        Some(sim.sends()[0].message_id.as_str())
    );

    // The simulator answers normally again, and shuts down despite the pending hang.
    assert_eq!(send(&sim, &fields(&[])).await["code"], 1);
    let started = std::time::Instant::now();
    sim.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "hang ended by shutdown"
    );
}

#[tokio::test]
async fn the_control_api_masks_the_token_and_steers_the_simulator() {
    let receiver = Receiver::start().await;
    let sim = start(config()).await;
    let control = sim.control_url();
    let http = client();

    let response = http
        .put(format!("{control}/webhook"))
        .json(&json!({"url": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = http
        .put(format!("{control}/webhook"))
        .json(&json!({"url": "not a url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .put(format!("{control}/accounts/{LOGIN}/balance"))
        .json(&json!({"balance": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(sim.balance(LOGIN), Some(50));
    let response = http
        .put(format!("{control}/accounts/nadie/balance"))
        .json(&json!({"balance": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = http
        .post(format!("{control}/faults"))
        .json(&json!({"fault": {"kind": "http_status", "status": 429}, "times": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(sim.pending_faults().len(), 2);
    http.delete(format!("{control}/faults"))
        .send()
        .await
        .unwrap();
    assert!(sim.pending_faults().is_empty());
    let response = http
        .post(format!("{control}/patients/{MOBILE}/script"))
        .json(&json!({"text": "1", "delay": "5ms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Urlencoded sends are taken too.
    let answer = post_form(&sim, "send", &fields(&[])).await;
    assert_eq!(answer["code"], 1);
    eventually("the scripted reply", || {
        receiver.bodies().iter().any(|b| b["message"] == "1")
    })
    .await;

    let requests: Value = crate::json_of(http.get(format!("{control}/requests"))).await;
    let first = &requests[0];
    assert_eq!(first["endpoint"], "send");
    assert_eq!(first["fields"]["token"], "***");
    assert_eq!(first["fields"]["login"], LOGIN);
    assert_eq!(first["code"], 1);
    assert!(first["content_type"]
        .as_str()
        .unwrap()
        .starts_with("application/x-www-form-urlencoded"));
    assert!(
        !requests.to_string().contains(TOKEN),
        "the token never shows"
    );

    let sends: Value = crate::json_of(http.get(format!("{control}/sends"))).await;
    assert_eq!(sends[0]["variables"][0], "Carlos");
    assert_eq!(sends[0]["custom_field"], "cita-42");
    assert_eq!(sends[0]["template_id"], 990);
    let callbacks: Value = crate::json_of(http.get(format!("{control}/callbacks"))).await;
    assert!(callbacks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["kind"] == "reply"));
    assert!(
        !callbacks.to_string().contains("s3cr3t"),
        "webhook secret masked"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_pending_callbacks_and_the_listener() {
    let receiver = Receiver::start().await;
    let mut config = config();
    config.delays.sent = Duration::from_millis(150);
    config.webhook_url = Some(receiver.url.clone());
    let sim = start(config).await;
    assert_eq!(send(&sim, &fields(&[])).await["code"], 1);
    let base_url = sim.base_url();
    sim.shutdown().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(receiver.count(), 0, "no callback after shutdown");
    let refused = client()
        .post(format!("{base_url}/balance/"))
        .form(&[("login", LOGIN), ("token", TOKEN)])
        .send()
        .await;
    assert!(refused.is_err(), "the listener is closed");
}

#[tokio::test]
async fn a_bad_config_is_refused_with_every_problem() {
    let yaml = "accounts:\n  - {login: a, token: t, balance: 1}\nfailures: {573001112233: 999}\ndelays: {sent: 5}\n";
    let error = SimConfig::from_yaml(yaml, "sim.yaml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("sim.yaml"), "{error}");
    assert!(error.contains("no unit"), "{error}");
    let yaml = "accounts:\n  - {login: a, token: t, balance: 1}\nfailures: {573001112233: 999}\n";
    let error = SimConfig::from_yaml(yaml, "sim.yaml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("1002–1008"), "{error}");
}

#[tokio::test]
async fn the_shipped_example_config_is_accepted() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/simulator.yaml");
    let config = SimConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.accounts.is_empty());
}

#[tokio::test]
async fn the_cli_serves_the_example_config() {
    use tokio::io::AsyncBufReadExt;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/simulator.yaml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .args(["simulator", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut base_url = None;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("provider.base_url:") {
                base_url = Some(url.trim().to_owned());
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the CLI printed no base URL in time");
    let base_url = base_url.expect("a base URL line");
    let answer: Value = crate::json_of(client().post(format!("{base_url}/template/")).form(&[
        ("login", "demo@gmail.com"),
        ("token", "b6fd61ec974d1652082a802a4d8e443712138ed"),
    ]))
    .await;
    assert!(answer.is_array(), "{answer}");
    child.kill().await.unwrap();
}
