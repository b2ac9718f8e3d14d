//! The engine end to end: the real engine and the provider simulator on port 0, a temporary
//! sled folder, real HTTP both ways.

use recuerda::app::{self, Running};
use recuerda::clock::{SharedClock, SystemClock};
use recuerda::config::Config;
use recuerda::secret::Secret;
use recuerda::simulator::{
    Account, DeliveryEvent, Fault, SimConfig, SimHandle, SimTemplate, Simulator,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const LOGIN: &str = "clinica@example.com";
pub const TOKEN: &str = "tok-3f9a0c2b7e";
pub const API_TOKEN: &str = "api-token-for-tests-0123456789";

pub const TEMPLATES: &[(u32, &str, &str, &[&str])] = &[
    (
        990,
        "Recordatorio",
        "Hola {1}, le recordamos su cita el {2} a las {3}. Responda 1 para confirmar o 2 para cancelar.",
        &["{{primer_nombre appointment.paciente}}", "{{fecha appointment.start}}", "{{hora appointment.start}}"],
    ),
    (991, "Confirmada", "{1}, su cita quedó confirmada. ¡Gracias!", &["{{primer_nombre appointment.paciente}}"]),
    (992, "Cancelada", "{1}, su cita fue cancelada.", &["{{primer_nombre appointment.paciente}}"]),
    (
        993,
        "Recordatorio 2h",
        "{1}, su cita es hoy a las {2}.",
        &["{{primer_nombre appointment.paciente}}", "{{hora appointment.start}}"],
    ),
    (
        994,
        "Segundo recordatorio",
        "{1}, ¿nos confirma su cita del {2}?",
        &["{{primer_nombre appointment.paciente}}", "{{fecha appointment.start}}"],
    ),
    (996, "Ayuda", "No entendimos \"{1}\". Responda 1 para confirmar o 2 para cancelar.", &["{{reply.message}}"]),
];

pub const RULES: &str = r#"
rules:
  - name: confirmacion-reserva
    trigger: {appointment: created}
    actions:
      - send: {template: 990, custom_field: "cita-{{appointment.id}}"}
      - set_state: esperando
  - name: confirma
    trigger:
      reply: {custom_field: "cita-*", text: "^(1|si|sí)\\b"}
    actions:
      - update_appointment: {status: confirmed}
      - set_state: confirmada
      - send: {template: 991}
  - name: cancela
    trigger:
      reply: {custom_field: "cita-*", text: "^(2|no)\\b"}
    actions:
      - update_appointment: {status: cancelled}
      - set_state: cancelada
      - send: {template: 992}
  - name: ayuda
    trigger:
      reply: {custom_field: "cita-*"}
    actions:
      - send: {template: 996}
"#;

pub struct TestApp {
    pub sim: SimHandle,
    pub app: Option<Running>,
    /// Holds the store's folder for the test's lifetime.
    pub _dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub config: Config,
    pub clock: SharedClock,
}

impl TestApp {
    pub fn app(&self) -> &Running {
        self.app.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app().base_url())
    }

    pub async fn put_appointment(&self, id: &str, body: Value) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/api/v1/appointments/{id}")))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("api reachable")
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("api reachable");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

pub fn write_folder(dir: &std::path::Path, rules: &str) -> Config {
    let rules_dir = dir.join("rules");
    let templates_dir = dir.join("templates");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::create_dir_all(&templates_dir).unwrap();
    std::fs::write(rules_dir.join("reglas.yaml"), rules).unwrap();
    for (id, name, body, vars) in TEMPLATES {
        let vars: Vec<String> = vars.iter().map(|v| format!("  - {:?}", v)).collect();
        std::fs::write(
            templates_dir.join(format!("{id}.yaml")),
            format!(
                "id: {id}\nname: {name:?}\nbody: {body:?}\nvariables:\n{}\n",
                vars.join("\n")
            ),
        )
        .unwrap();
    }
    Config {
        rules_dir,
        templates_dir,
        data_dir: dir.join("data"),
        ..Default::default()
    }
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        accounts: vec![Account {
            login: LOGIN.into(),
            token: Secret::new(TOKEN),
            balance: 1000,
            chatbot: true,
            templates: None,
        }],
        templates: TEMPLATES
            .iter()
            .map(|(id, name, body, _)| SimTemplate {
                id: *id,
                name: name.to_string(),
                body: body.to_string(),
                status: Default::default(),
            })
            .collect(),
        webhook_url: None,
        delays: recuerda::simulator::Delays {
            sent: Duration::from_millis(5),
            delivered: Duration::from_millis(10),
            read: Duration::from_millis(15),
            reply: Duration::from_millis(20),
        },
        failures: BTreeMap::new(),
        patients: BTreeMap::new(),
    }
}

pub async fn spawn_app(rules: &str, sim: SimConfig, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_clock(rules, sim, Arc::new(SystemClock), tweak).await
}

/// The engine on `clock` (a `ManualClock` drives days in milliseconds).
pub async fn spawn_app_with_clock(
    rules: &str,
    sim: SimConfig,
    clock: SharedClock,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(sim, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = write_folder(dir.path(), rules);
    config.provider.base_url = sim.base_url();
    config.provider.login = Some(LOGIN.into());
    config.provider.token = Some(Secret::new(TOKEN));
    config.provider.rate_per_second = 500;
    config.provider.retry_base = Duration::from_millis(20);
    config.provider.balance_poll = Duration::from_millis(50);
    config.provider.timeout = Duration::from_secs(2);
    config.webhook.secret = Some(Secret::generate(48));
    config.api.token = Some(Secret::new(API_TOKEN));
    tweak(&mut config);
    let mut t = TestApp {
        sim,
        app: None,
        _dir: dir,
        http: reqwest::Client::new(),
        config,
        clock,
    };
    t.start_engine().await;
    t
}

impl TestApp {
    /// Starts the engine on the test's store folder (again, after `stop_engine`).
    pub async fn start_engine(&mut self) {
        let running = self.launch().await;
        self.sim.set_webhook_url(running.webhook_url()).unwrap();
        self.app = Some(running);
    }

    /// A running engine on the test's config, clock and store folder, not yet tied to the
    /// simulator. Nothing in it yields once the engine's tasks are spawned.
    pub async fn launch(&self) -> Running {
        let rules = app::load_rules(&self.config).expect("test rules load");
        app::start(
            self.config.clone(),
            rules,
            self.clock.clone(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .expect("engine starts")
    }

    /// Stops the engine cleanly, keeping its store folder and the simulator.
    pub async fn stop_engine(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// Polls `check` until it returns `Some`, for at most 5 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn appointment(mobile: &str) -> Value {
    json!({"mobile": mobile, "start": "2030-11-26T15:30:00-05:00", "status": "scheduled",
           "paciente": "carlos andrés pérez", "profesional": "Dra. Gómez", "sede": "norte"})
}

async fn message_status(t: &TestApp, mobile: &str, template: u32) -> Option<Value> {
    let list = t.get(&format!("/api/v1/messages?mobile={mobile}")).await;
    list["messages"]
        .as_array()?
        .iter()
        .find(|m| m["template_id"] == template)
        .cloned()
}

#[tokio::test]
async fn send_then_sent_delivered_read_and_replays_change_nothing() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let r = t
        .put_appointment("A1", appointment("+57 310 233 4455"))
        .await;
    assert_eq!(r.status(), 201);
    let again = t
        .put_appointment("A1", appointment("+57 310 233 4455"))
        .await;
    assert_eq!(again.status(), 200);

    let msg = eventually("the reminder reads `read`", || async {
        message_status(&t, "573102334455", 990)
            .await
            .filter(|m| m["status"] == "read")
    })
    .await;
    let id = msg["message_id"].as_str().unwrap().to_string();
    let sends = t.sim.sends();
    assert_eq!(
        sends.len(),
        1,
        "one send for one booking, even after the PUT was repeated"
    );
    assert_eq!(
        sends[0].variables,
        vec!["Carlos", "martes 26 de noviembre", "3:30 p. m."]
    );
    assert_eq!(sends[0].custom_field.as_deref(), Some("cita-A1"));

    // The same events again, and out of order: the status stays `read`.
    for event in [
        DeliveryEvent::Delivered,
        DeliveryEvent::Sent,
        DeliveryEvent::Read,
        DeliveryEvent::Delivered,
    ] {
        t.sim.push_event(&id, event, None).await.unwrap();
    }
    let engine = &t.app().engine;
    engine.drain_inbox().await.unwrap();
    let msg = t.get(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(msg["status"], "read");
    let applied: Vec<&str> = msg["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["applied"] == true)
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(applied, ["queued", "sending", "sent", "delivered", "read"]);

    // The metrics say what happened: one send, its events and the replayed ones, no dead letter.
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in:\n{metrics}"))
    };
    assert_eq!(value("recuerda_sends_result_total{result=\"sent\"}"), 1.0);
    assert_eq!(value("recuerda_sends_result_total{result=\"failed\"}"), 0.0);
    assert_eq!(
        value("recuerda_status_events_total"),
        7.0,
        "3 from the simulator + 4 replayed"
    );
    assert_eq!(value("recuerda_dead_letters_total"), 0.0);
    assert_eq!(value("recuerda_outbox_depth"), 0.0);
    let flushes = value("recuerda_store_flushes_total");
    assert!(flushes > 0.0, "{metrics}");
    assert!(value("recuerda_store_flushed_waits_total") >= flushes);
    // The store's operations, per tree and kind: one message id linked, 7 events looked up.
    assert_eq!(
        value("recuerda_store_operations_total{tree=\"msgids\",op=\"write\"}"),
        1.0
    );
    assert!(value("recuerda_store_operations_total{tree=\"msgids\",op=\"read\"}") >= 7.0);
    assert!(value("recuerda_store_operations_total{tree=\"outbox\",op=\"write\"}") >= 3.0);
    assert!(
        metrics.contains("recuerda_dispatch_seconds"),
        "latency histogram:\n{metrics}"
    );
    t.shutdown().await;
}

/// A message's link to the provider's id outlives a restart: delivery events for a message
/// sent before it are applied after it (the link comes back from the store's journal).
#[tokio::test]
async fn delivery_events_after_a_restart_find_the_message_sent_before_it() {
    let mut sim = sim_config();
    sim.delays.delivered = Duration::from_secs(600);
    sim.delays.read = Duration::from_secs(600);
    let mut t = spawn_app(RULES, sim, |_| {}).await;
    let r = t
        .put_appointment("A1", appointment("+57 310 233 4455"))
        .await;
    assert_eq!(r.status(), 201);
    let msg = eventually("the reminder reads `sent`", || async {
        message_status(&t, "573102334455", 990)
            .await
            .filter(|m| m["status"] == "sent")
    })
    .await;
    let id = msg["message_id"].as_str().unwrap().to_string();

    t.stop_engine().await;
    t.start_engine().await;
    for event in [DeliveryEvent::Delivered, DeliveryEvent::Read] {
        t.sim.push_event(&id, event, None).await.unwrap();
    }
    t.app().engine.drain_inbox().await.unwrap();
    let msg = t.get(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(msg["status"], "read", "{msg}");
    t.shutdown().await;
}

#[tokio::test]
async fn reply_one_confirms_two_cancels_gibberish_gets_help_and_baja_opts_out() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let people = [
        ("C1", "573001110001", "1"),
        ("C2", "573001110002", "2"),
        ("C3", "573001110003", "hola?"),
        ("C4", "573001110004", "baja"),
    ];
    for (id, mobile, _) in &people {
        assert_eq!(
            t.put_appointment(id, appointment(mobile)).await.status(),
            201
        );
    }
    eventually("four reminders sent", || async {
        (t.sim.sends().len() == 4).then_some(())
    })
    .await;
    for (id, mobile, text) in &people {
        t.sim
            .reply(mobile, text, &format!("cita-{id}"))
            .await
            .unwrap();
    }
    eventually("three answers sent", || async {
        let templates: Vec<u32> = t.sim.sends().iter().map(|s| s.template_id).collect();
        (templates.contains(&991) && templates.contains(&992) && templates.contains(&996))
            .then_some(())
    })
    .await;
    let c1 = t.get("/api/v1/appointments/C1").await;
    assert_eq!(c1["status"], "confirmed");
    let conv = t.get("/api/v1/conversations/cita-C1").await;
    assert_eq!(conv["state"], "confirmada");
    // The reply's line and the rule's changes are one write: nothing can fall between them.
    let lines: Vec<(String, String)> = conv["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let text = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (text("kind"), text("detail"))
        })
        .collect();
    let at = lines.iter().position(|(k, _)| k == "reply").unwrap();
    assert_eq!(lines.iter().filter(|(k, _)| k == "reply").count(), 1);
    assert_eq!(
        lines[at..at + 3],
        [
            ("reply".to_string(), "1".to_string()),
            ("state".to_string(), "confirmada".to_string()),
            ("queued".to_string(), "template 991 queued".to_string()),
        ],
        "{lines:?}"
    );
    // Its messages, with their own progress: the reminder went out before the reply came.
    let messages = conv["messages"].as_array().unwrap();
    let reminder = messages
        .iter()
        .find(|m| m["template_id"] == 990)
        .expect("the reminder is listed with its conversation");
    assert!(
        ["sent", "delivered", "read"].contains(&reminder["status"].as_str().unwrap()),
        "{reminder}"
    );
    assert!(messages.iter().all(|m| m["custom_field"] == "cita-C1"));
    assert!(messages.iter().any(|m| m["template_id"] == 991));
    let c2 = t.get("/api/v1/appointments/C2").await;
    assert_eq!(c2["status"], "cancelled");
    let help = t
        .sim
        .sends()
        .into_iter()
        .find(|s| s.template_id == 996)
        .unwrap();
    assert_eq!(help.variables, vec!["hola?"]);
    assert_eq!(help.mobile, "573001110003");

    // BAJA: no rule ran for it, and a later message to that mobile is suppressed and recorded.
    assert!(!t
        .sim
        .sends()
        .iter()
        .any(|s| s.mobile == "573001110004" && s.template_id != 990));
    assert_eq!(
        t.put_appointment("C4b", appointment("573001110004"))
            .await
            .status(),
        201
    );
    let skipped = eventually("the suppressed send is recorded", || async {
        t.get("/api/v1/messages?mobile=573001110004").await["messages"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["status"] == "skipped").cloned())
    })
    .await;
    assert!(
        skipped["error"].as_str().unwrap().contains("opted out"),
        "{skipped}"
    );
    assert_eq!(
        t.sim
            .sends()
            .iter()
            .filter(|s| s.mobile == "573001110004")
            .count(),
        1
    );
    t.shutdown().await;
}

#[tokio::test]
async fn provider_500s_then_success_sends_once() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    for _ in 0..2 {
        t.sim.push_fault(Fault::HttpStatus {
            status: 500,
            body: "boom".into(),
            retry_after: None,
        });
    }
    t.put_appointment("F1", appointment("573001110010")).await;
    let msg = eventually("sent after two 500s", || async {
        message_status(&t, "573001110010", 990)
            .await
            .filter(|m| m["message_id"].is_string())
    })
    .await;
    assert_eq!(msg["attempts"], 3);
    assert_eq!(t.sim.sends().len(), 1);
    t.shutdown().await;
}

#[tokio::test]
async fn code_5_pauses_sending_until_the_balance_is_topped_up() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.sim.set_balance(LOGIN, 0).unwrap();
    t.put_appointment("B1", appointment("573001110020")).await;
    eventually("dispatcher paused", || async {
        matches!(
            t.app().engine.dispatch_state(),
            recuerda::engine::DispatchState::PausedForBalance
        )
        .then_some(())
    })
    .await;
    t.put_appointment("B2", appointment("573001110021")).await;
    // A reply's send is not handed to the paused dispatcher, where it would keep its reply
    // unfinished (and the store's reply mark behind it) until sending resumes: it waits in
    // the stored queue.
    let engine = &t.app().engine;
    let reply = recuerda::simulator::reply_payload("573001110022", "hola", "cita-B9").to_string();
    engine.accept_webhook(reply.as_bytes()).await.unwrap();
    assert_eq!(engine.store.unfinished_replies(), 0);
    assert_eq!(entries_of(engine, "cita-B9"), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(t.sim.sends().is_empty(), "nothing is sent while paused");
    t.sim.set_balance(LOGIN, 10).unwrap();
    eventually("all three sent after the top-up", || async {
        (t.sim.sends().len() == 3).then_some(())
    })
    .await;
    t.shutdown().await;
}

#[tokio::test]
async fn code_8_fails_that_message_only() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.sim.push_fault(Fault::Code { code: 8 });
    t.put_appointment("V1", appointment("573001110030")).await;
    let failed = eventually("the first message failed", || async {
        message_status(&t, "573001110030", 990)
            .await
            .filter(|m| m["status"] == "failed")
    })
    .await;
    assert_eq!(failed["code"], 8);
    assert!(
        failed["error"].as_str().unwrap().contains("code 8"),
        "{failed}"
    );
    t.put_appointment("V2", appointment("573001110031")).await;
    eventually("the next one is sent", || async {
        message_status(&t, "573001110031", 990)
            .await
            .filter(|m| m["message_id"].is_string())
    })
    .await;
    t.shutdown().await;
}

#[tokio::test]
async fn wrong_webhook_secret_is_404_and_malformed_body_is_400_and_kept() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let wrong = t
        .http
        .post(t.url("/webhook/not-the-secret"))
        .body(r#"{"mobile":"573001110040","message":"1","custom_field":"cita-X"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    assert_eq!(t.app().engine.store.inbox_depth(), 0);
    assert!(t.get("/api/v1/replies").await["replies"]
        .as_array()
        .unwrap()
        .is_empty());

    let hook = t.app().webhook_url().unwrap();
    let bad = t.http.post(&hook).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let odd = t
        .http
        .post(&hook)
        .body(r#"{"foo": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 202);
    let letters = t.get("/api/v1/dead-letters").await;
    let bodies: Vec<&str> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["{not json", r#"{"foo": 1}"#]);

    let unauthorized = t.http.get(t.url("/api/v1/replies")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    t.shutdown().await;
}

#[tokio::test]
async fn hot_reload_keeps_the_last_good_rules_and_health_names_the_broken_line() {
    let t = spawn_app(RULES, sim_config(), |c| {
        c.schedule.reload_poll = Duration::from_millis(50)
    })
    .await;
    let rules_file = t.config.rules_dir.join("reglas.yaml");
    t.put_appointment("H1", appointment("573001110050")).await;
    eventually("first booking confirmed", || async {
        (t.sim.sends().len() == 1).then_some(())
    })
    .await;

    // A broken edit: a bad cron on line 4.
    let broken = RULES.replacen(
        "    trigger: {appointment: created}",
        "    trigger: {cron: \"0 25 * * *\"}",
        1,
    );
    assert!(broken.lines().nth(3).unwrap().contains("cron"));
    std::fs::write(&rules_file, &broken).unwrap();
    let health = eventually("health shows the reload error", || async {
        let h: Value = crate::try_json_of(t.http.get(t.url("/healthz"))).await?;
        h["rules"]["last_reload_error"].is_string().then_some(h)
    })
    .await;
    let error = health["rules"]["last_reload_error"].as_str().unwrap();
    assert!(
        error.contains("reglas.yaml:4:"),
        "names the file and line: {error}"
    );
    // The previous rules keep firing.
    t.put_appointment("H2", appointment("573001110051")).await;
    eventually("second booking confirmed by the old rules", || async {
        t.sim
            .sends()
            .iter()
            .any(|s| s.mobile == "573001110051" && s.template_id == 990)
            .then_some(())
    })
    .await;

    // A valid edit takes effect without a restart.
    std::fs::write(
        &rules_file,
        RULES.replacen("template: 990", "template: 991", 1),
    )
    .unwrap();
    eventually("the fix is loaded", || async {
        let h: Value = crate::try_json_of(t.http.get(t.url("/healthz"))).await?;
        h["rules"]["last_reload_error"].is_null().then_some(())
    })
    .await;
    t.put_appointment("H3", appointment("573001110052")).await;
    eventually("third booking uses the new rule", || async {
        t.sim
            .sends()
            .iter()
            .any(|s| s.mobile == "573001110052" && s.template_id == 991)
            .then_some(())
    })
    .await;
    t.shutdown().await;
}

#[tokio::test]
async fn a_delivery_event_that_arrives_before_the_send_is_recorded_is_applied_when_it_is() {
    use axum::routing::post;
    // A provider whose send answers with a known id, a little late: the webhook's `delivered`
    // for that id arrives before the engine has stored the answer.
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().route(
        "/ws/send/",
        post(move || {
            let mut gate = gate_rx.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                axum::Json(
                    json!({"code": 1, "status": "mensaje enviado", "messageId": "early-bird-1"}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let t = spawn_app(RULES, sim_config(), |c| c.provider.base_url = base.clone()).await;
    t.put_appointment("O1", appointment("573001110060")).await;
    let hook = t.app().webhook_url().unwrap();
    let early = json!({"type": "message-event", "type2": " delivered", "messageId_whatsapp": "wamid.X",
                       "fecha_envio_por_whatsapp": "2026-11-25 08:00:01", "&messageId": "early-bird-1"});
    assert_eq!(
        t.http
            .post(&hook)
            .json(&early)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    t.app().engine.drain_inbox().await.unwrap();
    gate_tx.send_replace(true);
    let msg = eventually(
        "the parked event is applied once the send is recorded",
        || async {
            message_status(&t, "573001110060", 990)
                .await
                .filter(|m| m["status"] == "delivered")
        },
    )
    .await;
    assert_eq!(msg["message_id"], "early-bird-1");
    t.shutdown().await;
}

/// The engine's tasks may first run only after the stop was asked for (a stop right after a
/// start, on a busy machine). Each must still see it: a task that subscribed to the stop
/// signal after it was sent used to wait for a change that never came (the balance guard
/// until its next 15-minute poll), and the stop with it.
#[tokio::test]
async fn an_engine_stopped_before_its_tasks_first_ran_stops_at_once() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.stop_engine().await;
    // A current-thread runtime: nothing between the start and the stop below yields, so no
    // task of the engine has run when it is told to stop.
    let running = t.launch().await;
    tokio::time::timeout(Duration::from_secs(10), running.engine.shutdown())
        .await
        .expect("the engine stops within 10 s");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_whose_reactions_a_crash_cut_short_still_gets_them() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.stop_engine().await;
    // What a crash right after the booking's write leaves: the appointment and its change
    // noted, no reactions yet.
    let now = chrono::Utc::now();
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    for id in ["X1", "X2"] {
        let appt = recuerda::appointment::Appointment::from_json(
            id,
            &appointment(if id == "X1" {
                "573001110070"
            } else {
                "573001110071"
            }),
            now,
            None,
        )
        .unwrap();
        store
            .put_appointment_marked(&appt, |_| Some("created".into()))
            .unwrap();
    }
    store.durable().await.unwrap();
    drop(store);
    // X1: the engine finishes the reactions when it starts.
    t.start_engine().await;
    eventually("X1's confirmation is sent after the restart", || async {
        t.sim
            .sends()
            .iter()
            .any(|s| s.mobile == "573001110070")
            .then_some(())
    })
    .await;
    assert!(t
        .app()
        .engine
        .store
        .pending_appointment_changes()
        .unwrap()
        .is_empty());
    // X2 was handled at start too; the client's retried PUT (answered 200) sends nothing more.
    assert_eq!(
        t.put_appointment("X2", appointment("573001110071"))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.sim
            .sends()
            .iter()
            .filter(|s| s.mobile == "573001110071")
            .count(),
        1
    );
    // X3: the note left while running (no restart); the client's retried PUT finishes it.
    let x3 = recuerda::appointment::Appointment::from_json(
        "X3",
        &appointment("573001110072"),
        now,
        None,
    )
    .unwrap();
    t.app()
        .engine
        .store
        .put_appointment_marked(&x3, |_| Some("created".into()))
        .unwrap();
    assert_eq!(
        t.put_appointment("X3", appointment("573001110072"))
            .await
            .status(),
        200
    );
    eventually("X3's confirmation is sent on the retried PUT", || async {
        t.sim
            .sends()
            .iter()
            .any(|s| s.mobile == "573001110072")
            .then_some(())
    })
    .await;
    t.shutdown().await;
}

/// The patient's lines in conversation `cf`, oldest first.
fn reply_lines(engine: &recuerda::engine::Engine, cf: &str) -> Vec<String> {
    let conv = engine.store.get_conversation(cf).unwrap().unwrap();
    conv.history
        .iter()
        .filter(|h| h.kind == "reply")
        .map(|h| h.detail.clone())
        .collect()
}

/// A reply's record as a reaction writes it first (or an older recuerda did), under an id
/// begun (and never finished) in `store`: what a crash right after leaves. Its text is `1`.
pub fn write_reply(
    store: &recuerda::store::Store,
    mobile: &str,
    custom_field: &str,
    received_at: chrono::DateTime<chrono::Utc>,
    rule: Option<&str>,
    outcome: &str,
) -> uuid::Uuid {
    let id = store.begin_reply();
    store
        .put_reply(&recuerda::conversation::Reply {
            id: id.to_string(),
            mobile: mobile.into(),
            message: "1".into(),
            custom_field: Some(custom_field.into()),
            received_at,
            rule: rule.map(str::to_string),
            outcome: outcome.into(),
        })
        .unwrap();
    id
}

/// How many outbox entries (messages) conversation `cf` has.
fn entries_of(engine: &recuerda::engine::Engine, cf: &str) -> usize {
    engine
        .store
        .outbox_entries()
        .map(Result::unwrap)
        .filter(|e| e.custom_field.as_deref() == Some(cf))
        .count()
}

/// A webhook event is reacted to before its answer when nothing older waits: the reply's
/// record and what its rule queued are stored when `accept_webhook` returns, and the inbox
/// is empty again. An event arriving behind older ones waits its turn: the processor takes
/// them in arrival order, so a conversation's lines keep the order the patient wrote them.
#[tokio::test]
async fn a_webhook_is_reacted_to_at_intake_unless_older_events_wait() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let engine = &t.app().engine;
    let body = |text: &str| {
        recuerda::simulator::reply_payload("573001110009", text, "cita-Z9").to_string()
    };

    assert_eq!(
        engine.accept_webhook(body("1").as_bytes()).await.unwrap(),
        recuerda::engine::Intake::Accepted
    );
    assert_eq!(engine.store.inbox_depth(), 0);
    let replies: Vec<_> = engine.store.replies().map(Result::unwrap).collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].outcome, "handled");
    assert_eq!(replies[0].rule.as_deref(), Some("confirma"));
    assert_eq!(
        entries_of(engine, "cita-Z9"),
        1,
        "the rule's send is in the outbox"
    );

    // An older event the processor has not taken yet (pushed without waking it).
    let older = body("hola");
    engine
        .store
        .push_inbox(engine.clock.now(), older.as_bytes())
        .unwrap();
    engine.accept_webhook(body("2").as_bytes()).await.unwrap();
    engine.drain_inbox().await.unwrap();
    assert_eq!(engine.store.inbox_depth(), 0);
    assert_eq!(reply_lines(engine, "cita-Z9"), ["1", "hola", "2"]);
    t.shutdown().await;
}

/// A reply whose reaction a format-1 recuerda began (its sends keyed `reply:{rule}:{id}`) and
/// a crash cut short, before its record: replayed after the upgrade, it runs under that old
/// key, so what it had queued is not queued a second time under the new one.
#[tokio::test]
async fn a_reply_cut_short_before_the_upgrade_is_replayed_under_its_old_key() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let engine = &t.app().engine;
    let id = uuid::Uuid::now_v7();
    let raw = recuerda::simulator::reply_payload("573001110007", "1", "cita-Z7").to_string();
    // What the older recuerda left: the body in the inbox, one send queued under the old key
    // (paused for now, so it waits), no reply record.
    let mut left = recuerda::message::OutboxEntry::queued(
        format!("reply:confirma:{id}#2"),
        recuerda::message::OutboxKind::Send,
        "confirma",
        2,
        engine.clock.now() + chrono::Duration::hours(1),
    );
    left.custom_field = Some("cita-Z7".into());
    assert!(engine.store.enqueue(&left).unwrap());
    engine
        .store
        .push_inbox_as(id, engine.clock.now(), raw.as_bytes())
        .unwrap();
    engine.drain_inbox().await.unwrap();
    let keys: Vec<String> = engine
        .store
        .outbox_entries()
        .map(Result::unwrap)
        .filter(|e| e.custom_field.as_deref() == Some("cita-Z7"))
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec![left.key.clone()], "nothing queued twice");
    let record = engine.store.get_reply(&id.to_string()).unwrap().unwrap();
    assert_eq!(record.outcome, "handled");
    t.shutdown().await;
}

/// A reply's record is its reaction's first write (with what it decided), and its line in its
/// conversation the last: an event replayed from the inbox whose line is there is not reacted
/// to again (no second line, nothing queued twice); one whose record is missing (a crash cut
/// its reaction short) runs again — as does one still `received` (see the test after).
#[tokio::test]
async fn a_replayed_reply_runs_again_only_if_its_reaction_was_cut_short() {
    let t = spawn_app(RULES, sim_config(), |_| {}).await;
    let engine = &t.app().engine;
    let body = |text: &str| {
        recuerda::simulator::reply_payload("573001110008", text, "cita-Z8").to_string()
    };
    let reply_lines = || reply_lines(engine, "cita-Z8");
    let queued = || entries_of(engine, "cita-Z8");

    engine.accept_webhook(body("1").as_bytes()).await.unwrap();
    let first = engine.store.replies().map(Result::unwrap).next().unwrap();
    assert_eq!((reply_lines(), queued()), (vec!["1".to_string()], 1));

    // The same event back in the inbox under its id, as a crash before its removal leaves it.
    let id: uuid::Uuid = first.id.parse().unwrap();
    let raw = body("1");
    engine
        .store
        .push_inbox_as(id, first.received_at, raw.as_bytes())
        .unwrap();
    engine.drain_inbox().await.unwrap();
    assert_eq!(
        (reply_lines(), queued()),
        (vec!["1".to_string()], 1),
        "a complete reaction is not run again"
    );

    // An event whose reaction left no record: it runs.
    let lost = uuid::Uuid::now_v7();
    let raw = body("hola");
    engine
        .store
        .push_inbox_as(lost, engine.clock.now(), raw.as_bytes())
        .unwrap();
    engine.drain_inbox().await.unwrap();
    assert_eq!(reply_lines(), ["1", "hola"]);
    assert_eq!(queued(), 2, "the help message for `hola` is queued");
    let record = engine.store.get_reply(&lost.to_string()).unwrap().unwrap();
    assert_ne!(record.outcome, "duplicate");
    t.shutdown().await;
}

/// A reply reacted to in its request writes its record first and no inbox item: when a crash
/// cuts its reaction short, the next start finds the record at or above the store's reply
/// mark and replays it under its id, once — a further restart adds nothing. Here the record is
/// a format-4 one, still `received`: the replay decides.
#[tokio::test]
async fn a_reply_a_crash_cut_short_after_its_first_write_is_replayed_once() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let id = write_reply(
        &store,
        "573001110009",
        "cita-Z9",
        chrono::Utc::now(),
        None,
        recuerda::conversation::Reply::RECEIVED,
    );
    store.durable().await.unwrap();
    // The "crash": the reply is never finished.
    drop(store);
    t.start_engine().await;
    let engine = &t.app().engine;
    eventually("the replayed reply's reaction", || async {
        let record = engine.store.get_reply(&id.to_string()).unwrap()?;
        record.is_done().then_some(())
    })
    .await;
    let record = engine.store.get_reply(&id.to_string()).unwrap().unwrap();
    assert_eq!(record.outcome, "handled");
    assert_eq!(reply_lines(engine, "cita-Z9"), ["1"]);
    assert_eq!(
        entries_of(engine, "cita-Z9"),
        1,
        "its rule's send, queued once"
    );

    t.stop_engine().await;
    t.start_engine().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let engine = &t.app().engine;
    assert_eq!(engine.store.inbox_depth(), 0);
    assert_eq!(reply_lines(engine, "cita-Z9"), ["1"], "not replayed again");
    assert_eq!(entries_of(engine, "cita-Z9"), 1);
    t.shutdown().await;
}

/// A replay completes what the reply's first run decided (the rule in its record) instead of
/// matching again: that run may have changed the conversation's state before a crash (as a
/// `notify` writes the changes before it), and a new match would pick the rule for the new
/// state and send a second, different message.
#[tokio::test]
async fn a_replayed_reply_completes_the_rule_it_recorded_instead_of_matching_again() {
    let rules = r#"
rules:
  - name: confirma
    trigger:
      reply: {custom_field: "cita-*", text: "^1$", state: esperando}
    actions:
      - set_state: confirmada
      - send: {template: 991}
  - name: ya-confirmada
    trigger:
      reply: {custom_field: "cita-*", text: "^1$", state: confirmada}
    actions:
      - send: {template: 996}
"#;
    let mut t = spawn_app(rules, sim_config(), |_| {}).await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let now = chrono::Utc::now();
    let id = write_reply(
        &store,
        "573001110010",
        "cita-Z10",
        now,
        Some("confirma"),
        "handled",
    );
    // What the first run wrote before the crash: the state, not yet its line.
    store
        .update_conversation("cita-Z10", now, |c| {
            c.state = Some("confirmada".into());
        })
        .unwrap();
    store.durable().await.unwrap();
    drop(store);
    t.start_engine().await;
    let engine = &t.app().engine;
    eventually("the replayed reply's line", || async {
        (reply_lines(engine, "cita-Z10") == ["1"]).then_some(())
    })
    .await;
    let sends: Vec<(String, Option<u32>)> = engine
        .store
        .outbox_entries()
        .map(Result::unwrap)
        .filter(|e| e.custom_field.as_deref() == Some("cita-Z10"))
        .map(|e| (e.rule, e.template_id))
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].0, "confirma", "the recorded rule, not a new match");
    let record = engine.store.get_reply(&id.to_string()).unwrap().unwrap();
    assert_eq!(
        (record.outcome.as_str(), record.rule.as_deref()),
        ("handled", Some("confirma"))
    );

    t.stop_engine().await;
    t.start_engine().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let engine = &t.app().engine;
    assert_eq!(
        reply_lines(engine, "cita-Z10"),
        ["1"],
        "complete: not replayed again"
    );
    assert_eq!(
        engine
            .store
            .outbox_entries()
            .map(Result::unwrap)
            .filter(|e| e.custom_field.as_deref() == Some("cita-Z10"))
            .count(),
        1
    );
    t.shutdown().await;
}

/// A reply's due send is written by the dispatcher, for the first time as `sending`: a crash
/// after the reaction's own writes (its line in its conversation last) and before that leaves
/// the send unwritten. The next start replays the reply, which finds its line, so does
/// nothing again but write that send (in the stored queue): sent once, one line.
#[tokio::test]
async fn a_replay_writes_the_send_its_reply_handed_off_and_nothing_else_again() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let now = chrono::Utc::now();
    write_reply(
        &store,
        "573001110011",
        "cita-Z11",
        now,
        Some("confirma"),
        "handled",
    );
    // The reaction's last write: its state and its line (its send handed off, unwritten).
    store
        .update_conversation("cita-Z11", now, |c| {
            c.mobile = Some("573001110011".into());
            c.state = Some("confirmada".into());
            c.record(now, "reply", "1".into(), None);
            c.record(
                now,
                "queued",
                "template 991 queued".into(),
                Some("confirma"),
            );
        })
        .unwrap();
    store.durable().await.unwrap();
    drop(store);
    t.start_engine().await;
    let engine = &t.app().engine;
    eventually("the handed-off send, written by the replay", || async {
        (entries_of(engine, "cita-Z11") == 1).then_some(())
    })
    .await;
    let conv = engine.store.get_conversation("cita-Z11").unwrap().unwrap();
    // (Then the send's own outcome: this template needs an appointment.)
    let kinds: Vec<&str> = conv.history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(kinds[..2], ["reply", "queued"], "nothing written again");
    assert!(
        kinds[2..].iter().all(|k| ["sent", "refused"].contains(k)),
        "{kinds:?}"
    );
    assert_eq!(engine.store.inbox_depth(), 0);

    t.stop_engine().await;
    t.start_engine().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let engine = &t.app().engine;
    assert_eq!(entries_of(engine, "cita-Z11"), 1, "written once");
    assert_eq!(reply_lines(engine, "cita-Z11"), ["1"]);
    t.shutdown().await;
}

/// A send whose template reads the conversation gets it as it stands at send time (the
/// dispatcher reads the conversation only for such sends).
#[tokio::test]
async fn a_send_that_reads_the_conversation_sees_its_state() {
    let rules = r#"
rules:
  - name: estado
    trigger:
      reply: {custom_field: "consulta-*", text: "^estado"}
    actions:
      - set_state: consultado
      - send: {template: 996, variables: ["{{conversation.state}} ({{conversation.custom_field}})"]}
"#;
    let t = spawn_app(rules, sim_config(), |_| {}).await;
    t.sim
        .reply("573001110007", "estado", "consulta-7")
        .await
        .unwrap();
    let sends = eventually("the answer is sent", || async {
        let sends = t.sim.sends();
        (!sends.is_empty()).then_some(sends)
    })
    .await;
    assert_eq!(sends[0].variables, ["consultado (consulta-7)"]);
    t.shutdown().await;
}

/// A repeat of a delivery event already applied (a provider retry, or a replay after a crash
/// cut its reaction short) adds nothing to the message's timeline, but runs its `status` rules
/// again: what the first run did not get to write is done then, and nothing is done twice.
#[tokio::test]
async fn a_repeated_delivery_event_runs_the_status_rules_it_missed_once() {
    let first_rules = r#"
rules:
  - name: recordatorio
    trigger: {appointment: created}
    actions:
      - send: {template: 990, custom_field: "cita-{{appointment.id}}"}
"#;
    let mut sim = sim_config();
    // Only `sent` comes from the simulator: the test sends `delivered` itself.
    sim.delays.delivered = Duration::from_secs(3600);
    sim.delays.read = Duration::from_secs(3600);
    let t = spawn_app(first_rules, sim, |_| {}).await;
    let mobile = "573001110006";
    assert_eq!(
        t.put_appointment("R1", appointment(mobile)).await.status(),
        201
    );
    let msg = eventually("the reminder is sent", || async {
        message_status(&t, mobile, 990)
            .await
            .filter(|m| m["status"] == "sent")
    })
    .await;
    let id = msg["message_id"].as_str().unwrap().to_string();
    let engine = &t.app().engine;
    let at = chrono::Utc::now();
    let delivered =
        recuerda::simulator::event_payload(DeliveryEvent::Delivered, &id, "wamid.r1", None, at)
            .to_string();
    engine.accept_webhook(delivered.as_bytes()).await.unwrap();

    // What a first run cut short looks like: the status is applied, its rule did not run
    // (here: the rule arrives only now).
    let with_rule = format!(
        "{first_rules}  - name: entregado\n    trigger: {{status: delivered}}\n    actions:\n      - send: {{template: 991}}\n"
    );
    write_folder(t._dir.path(), &with_rule);
    engine.reload_rules().unwrap();
    for _ in 0..3 {
        engine.accept_webhook(delivered.as_bytes()).await.unwrap();
    }
    eventually("the status rule's send went out", || async {
        (t.sim.sends().len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        t.sim.sends().len(),
        2,
        "the rule ran once for three repeats"
    );
    let msg = t.get(&format!("/api/v1/messages/{id}")).await;
    let delivered_lines = msg["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "delivered")
        .count();
    assert_eq!(
        delivered_lines, 1,
        "the repeats added nothing to the timeline"
    );
    t.shutdown().await;
}
