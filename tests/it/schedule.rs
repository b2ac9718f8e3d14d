//! Time-driven rules on a manual clock: days pass in milliseconds. The engine, the simulator
//! and the store are real; only "now" is ours.

use super::engine::{sim_config, spawn_app_with_clock, TestApp};
use chrono::{DateTime, Duration as Days, TimeZone, Utc};
use recuerda::clock::{Clock, ManualClock};
use recuerda::message::MessageStatus;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const RULES: &str = r#"
rules:
  - name: dia-antes
    trigger: {cron: "0 8 * * *"}
    for_each: {appointments: {starts: tomorrow, status: [scheduled]}}
    actions:
      - send: {template: 990, custom_field: "cita-{{appointment.id}}"}
      - set_state: esperando
  - name: dos-horas
    trigger: {before: 2h}
    where: {appointment.status: [scheduled, confirmed]}
    actions:
      - send: {template: 993, custom_field: "cita-{{appointment.id}}"}
  - name: confirma
    trigger:
      reply: {custom_field: "cita-*", text: "^(1|si|sí)\\b"}
    actions:
      - update_appointment: {status: confirmed}
      - send: {template: 991}
  - name: cancela
    trigger:
      reply: {custom_field: "cita-*", text: "^(2|no)\\b"}
    actions:
      - update_appointment: {status: cancelled}
      - send: {template: 992}
  - name: sin-respuesta
    trigger:
      no_reply: {after: 4h, rule: dia-antes}
    actions:
      - send: {template: 994}
"#;

fn bogota(day: u32, h: u32, m: u32) -> DateTime<Utc> {
    chrono_tz::America::Bogota
        .with_ymd_and_hms(2030, 3, day, h, m, 0)
        .unwrap()
        .with_timezone(&Utc)
}

fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::America::Bogota)
        .format("%d %H:%M")
        .to_string()
}

/// Waits until nothing due at the current fake time is left: no due plan, no queued entry due,
/// nothing in flight, no unprocessed webhook event.
async fn settle(t: &TestApp) {
    let engine = &t.app().engine;
    for _ in 0..500 {
        let now = engine.clock.now();
        let store = &engine.store;
        let in_flight = || {
            store
                .outbox_entries()
                .filter_map(Result::ok)
                .any(|e| e.status == MessageStatus::Sending)
        };
        // Each stage is asked after the ones that feed it (plans and webhooks, then queued
        // sends, then sends in flight): work moves forward while we look, so a send that
        // leaves the queue after the queue was asked is still caught in flight. Asked the other
        // way round, a send marked between the two looks was missed, and the clock moved on
        // under its request (a no-reply timer started a step late).
        if engine.scheduled_through().is_some_and(|t| t >= now)
            && store.due_until(now, 1).unwrap().is_empty()
            && store.inbox_depth() == 0
            // A reply's sends handed straight to the dispatcher are in no stored queue.
            && store.unfinished_replies() == 0
            && store.due_outbox(now, 1).unwrap().is_empty()
            && !in_flight()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let now = engine.clock.now();
    let stuck: Vec<String> = engine
        .store
        .outbox_entries()
        .filter_map(Result::ok)
        .filter(|e| matches!(e.status, MessageStatus::Sending | MessageStatus::Queued))
        .map(|e| format!("{} {} not_before {}", e.key, e.status, local(e.not_before)))
        .collect();
    panic!(
        "the engine did not settle at {}: scheduled through {:?}, due plans {:?}, outbox {stuck:?}, inbox {}",
        local(now),
        engine.scheduled_through().map(local),
        engine.store.due_until(now, 3).unwrap().iter().map(|d| d.key.clone()).collect::<Vec<_>>(),
        engine.store.inbox_depth()
    );
}

async fn step_to(t: &TestApp, clock: &ManualClock, until: DateTime<Utc>, every: Days) {
    while clock.now() < until {
        clock.set((clock.now() + every).min(until));
        settle(t).await;
    }
}

/// Stops the engine, moves the clock to `at` (time passing while it is down), starts it again
/// and lets it catch up.
async fn restart_at(t: &mut TestApp, clock: &ManualClock, at: DateTime<Utc>) {
    t.stop_engine().await;
    clock.set(at);
    t.start_engine().await;
    settle(t).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

fn sends_of(t: &TestApp, template: u32) -> usize {
    t.sim
        .sends()
        .iter()
        .filter(|s| s.template_id == template)
        .count()
}

/// (template, appointment id) → the fake time the send left, from the engine's own records.
fn sends_by_template(t: &TestApp) -> BTreeMap<(u32, String), DateTime<Utc>> {
    let mut out = BTreeMap::new();
    for e in t.app().engine.store.outbox_entries().filter_map(Result::ok) {
        if e.message_id.is_none() {
            continue;
        }
        let left = e
            .timeline
            .iter()
            .find(|c| c.status == MessageStatus::Sending)
            .unwrap()
            .at;
        out.insert(
            (
                e.template_id.unwrap(),
                e.appointment_id.clone().unwrap_or_default(),
            ),
            left,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_clinic_day() {
    let clock = Arc::new(ManualClock::new(bogota(4, 6, 0)));
    let t = spawn_app_with_clock(RULES, sim_config(), clock.clone(), |_| {}).await;
    let engine = t.app().engine.clone();
    // 25 appointments tomorrow (T*) from 9:00, 25 today (D*) from 10:00.
    let mut starts = BTreeMap::new();
    for i in 0..25 {
        let tomorrow = bogota(5, 9, 0) + Days::minutes(15 * i);
        let today = bogota(4, 10, 0) + Days::minutes(10 * i);
        for (id, start) in [(format!("T{i:02}"), tomorrow), (format!("D{i:02}"), today)] {
            let body = json!({"mobile": format!("57301{:07}", starts.len()), "start": start.with_timezone(&chrono_tz::America::Bogota).to_rfc3339(),
                              "paciente": "Ana María Ruiz", "profesional": "Dra. Gómez"});
            engine.upsert_appointment(&id, &body).unwrap();
            starts.insert(id, start);
        }
    }
    settle(&t).await;
    // 07:00: D00 is cancelled; its 08:00 reminder must never go.
    step_to(&t, &clock, bogota(4, 7, 0), Days::minutes(5)).await;
    engine.cancel_appointment("D00").unwrap();
    // 08:00: the day-before cron reminds all of tomorrow's patients.
    step_to(&t, &clock, bogota(4, 8, 30), Days::minutes(5)).await;
    assert_eq!(sends_of(&t, 990), 25);
    // 08:30: five confirm, two cancel.
    for i in 0..7 {
        let id = format!("T{i:02}");
        let mobile = engine.store.get_appointment(&id).unwrap().unwrap().mobile;
        t.sim
            .reply(
                &mobile,
                if i < 5 { "1" } else { "2" },
                &format!("cita-{id}"),
            )
            .await
            .unwrap();
    }
    settle(&t).await;
    // 09:00: T24 moves to 15:00 tomorrow: its 2 h reminder moves with it.
    step_to(&t, &clock, bogota(4, 9, 0), Days::minutes(5)).await;
    let moved = bogota(5, 15, 0);
    let mut body = engine
        .store
        .get_appointment("T24")
        .unwrap()
        .unwrap()
        .to_context();
    body["start"] = json!(moved
        .with_timezone(&chrono_tz::America::Bogota)
        .to_rfc3339());
    engine.upsert_appointment("T24", &body).unwrap();
    starts.insert("T24".into(), moved);
    // 11:00: L1 is booked for 12:00: its 2 h reminder time has passed (late: skip).
    step_to(&t, &clock, bogota(4, 11, 0), Days::minutes(5)).await;
    engine
        .upsert_appointment("L1", &json!({"mobile": "573019999999", "start": "2030-03-04T12:00:00-05:00", "paciente": "Luis"}))
        .unwrap();
    step_to(&t, &clock, bogota(5, 18, 0), Days::minutes(5)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let sent = sends_by_template(&t);
    let ids = |template: u32| -> Vec<String> {
        sent.keys()
            .filter(|(tpl, _)| *tpl == template)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let t_ids = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("T{i:02}")).collect()
    };
    // Day-before: all 25 tomorrow, at 08:00.
    assert_eq!(ids(990), t_ids(0..25));
    assert!(ids(990)
        .iter()
        .all(|id| sent[&(990, id.clone())] == bogota(4, 8, 0)));
    // Confirmations and cancellations.
    assert_eq!(ids(991), t_ids(0..5));
    assert_eq!(ids(992), t_ids(5..7));
    // No reply in 4 h after 08:00: everyone who did not answer, at 12:00.
    assert_eq!(ids(994), t_ids(7..25));
    let late: Vec<String> = ids(994)
        .into_iter()
        .filter(|id| sent[&(994, id.clone())] != bogota(4, 12, 0))
        .map(|id| format!("{id} at {}", local(sent[&(994, id.clone())])))
        .collect();
    // On failure, each late patient's messages with their timelines: a no-reply timer starts
    // when its reminder's send is recorded, so a retried reminder shows why.
    let story = |id: &str| -> Vec<String> {
        t.app()
            .engine
            .store
            .outbox_entries()
            .filter_map(Result::ok)
            .filter(|e| e.custom_field.as_deref() == Some(&format!("cita-{id}")))
            .map(|e| {
                let steps: Vec<String> = e
                    .timeline
                    .iter()
                    .map(|c| format!("{} {} {:?}", c.status.as_str(), local(c.at), c.reason))
                    .collect();
                format!("{:?}: {}", e.template_id, steps.join(", "))
            })
            .collect()
    };
    assert!(
        late.is_empty(),
        "no-reply reminders not sent at 12:00: {late:?}; their messages: {:?}",
        late.iter()
            .map(|l| story(l.split(' ').next().unwrap_or_default()))
            .collect::<Vec<_>>()
    );
    // Two hours before: today's except the cancelled D00; tomorrow's except the two who
    // cancelled; T24 at its new time; L1 (booked late) never.
    let mut expected: Vec<String> = (1..25).map(|i| format!("D{i:02}")).collect();
    expected.extend(t_ids(0..5));
    expected.extend(t_ids(7..25));
    expected.sort();
    assert_eq!(ids(993), expected);
    for id in &expected {
        assert_eq!(
            sent[&(993, id.clone())],
            starts[id] - Days::hours(2),
            "2 h reminder of {id}"
        );
    }
    // And the simulator saw exactly these, each once.
    assert_eq!(t.sim.sends().len(), sent.len());
    let late = engine
        .store
        .fired("remind:dos-horas:L1:2030-03-04T17:00:00+00:00")
        .unwrap()
        .unwrap();
    assert!(late.outcome.starts_with("late-skipped"), "{late:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_across_8_catches_up_once_and_a_long_outage_is_recorded_as_missed() {
    let clock = Arc::new(ManualClock::new(bogota(4, 7, 50)));
    let mut t = spawn_app_with_clock(RULES, sim_config(), clock.clone(), |_| {}).await;
    for i in 0..3 {
        let body = json!({"mobile": format!("5730200000{i:02}"), "start": "2030-03-05T10:00:00-05:00", "paciente": "Ana"});
        t.app()
            .engine
            .upsert_appointment(&format!("R{i}"), &body)
            .unwrap();
    }
    step_to(&t, &clock, bogota(4, 7, 55), Days::minutes(1)).await;
    restart_at(&mut t, &clock, bogota(4, 8, 30)).await;
    assert_eq!(sends_of(&t, 990), 3, "caught up once");
    // Another restart, and the same slot again by hand: nothing is sent twice.
    restart_at(&mut t, &clock, bogota(4, 8, 40)).await;
    let ran = t.app().engine.run_rule_now("dia-antes").unwrap();
    assert_eq!(ran, 0, "a manual run repeats no occasion");
    // A dry run shows what the rule would send, rendered, and sends nothing.
    let dry: serde_json::Value = crate::json_of(
        t.http
            .post(t.url("/api/v1/rules/dia-antes/run?dry_run=true"))
            .bearer_auth(super::engine::API_TOKEN),
    )
    .await;
    let would = dry["would_send"]
        .as_array()
        .unwrap_or_else(|| panic!("{dry}"));
    assert_eq!(would.len(), 3, "{dry}");
    assert_eq!(
        would[0]["sends"][0]["text"],
        "Hola Ana, le recordamos su cita el martes 5 de marzo a las 10:00 a. m.. Responda 1 para confirmar o 2 para cancelar."
    );
    assert!(would[0]["already_fired"].is_string(), "{dry}");
    settle(&t).await;
    assert_eq!(sends_of(&t, 990), 3);

    // Down for three days: the slots are past the 6 h grace; recorded, nothing sent.
    for i in 0..2 {
        let body = json!({"mobile": format!("5730300000{i:02}"), "start": "2030-03-08T10:00:00-05:00", "paciente": "Ana"});
        t.app()
            .engine
            .upsert_appointment(&format!("S{i}"), &body)
            .unwrap();
    }
    settle(&t).await;
    restart_at(&mut t, &clock, bogota(7, 15, 0)).await;
    assert_eq!(sends_of(&t, 990), 3, "nothing sent for missed slots");
    let store = &t.app().engine.store;
    for day in [5, 6, 7] {
        let slot = bogota(day, 8, 0).to_rfc3339();
        let fired = store.fired(&format!("cron:dia-antes:{slot}")).unwrap();
        assert!(
            fired.is_some_and(|f| f.outcome.starts_with("missed")),
            "slot {slot} recorded as missed"
        );
    }
    // Visible in the API: the missed occasions, and the rule's last deed.
    let missed = t.get("/api/v1/missed").await;
    let slots: Vec<&str> = missed["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["occasion"].as_str().unwrap())
        .collect();
    assert!(
        slots.contains(&"cron:dia-antes:2030-03-07T13:00:00+00:00"),
        "{missed}"
    );
    let rules = t.get("/api/v1/rules").await;
    let dia_antes = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "dia-antes")
        .unwrap()
        .clone();
    assert!(
        dia_antes["last"]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("missed"),
        "{dia_antes}"
    );
    assert_eq!(dia_antes["next_fire"], "2030-03-08T13:00:00+00:00");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_a_send_until_the_window_ends_and_recheck_it() {
    let clock = Arc::new(ManualClock::new(bogota(4, 21, 0)));
    let t = spawn_app_with_clock(super::engine::RULES, sim_config(), clock.clone(), |c| {
        c.quiet_hours = Some(recuerda::config::QuietHours {
            from: chrono::NaiveTime::from_hms_opt(20, 0, 0).unwrap(),
            to: chrono::NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
        });
    })
    .await;
    let engine = t.app().engine.clone();
    engine
        .upsert_appointment("Q1", &json!({"mobile": "573004440001", "start": "2030-03-06T10:00:00-05:00", "paciente": "Ana"}))
        .unwrap();
    engine
        .upsert_appointment("Q2", &json!({"mobile": "573004440002", "start": "2030-03-06T11:00:00-05:00", "paciente": "Beto"}))
        .unwrap();
    settle(&t).await;
    let queued: Vec<_> = engine
        .store
        .outbox_entries()
        .filter_map(Result::ok)
        .collect();
    assert!(
        queued
            .iter()
            .all(|e| e.status == MessageStatus::Queued && e.not_before == bogota(5, 7, 0)),
        "visibly scheduled for 07:00"
    );
    step_to(&t, &clock, bogota(5, 6, 55), Days::minutes(30)).await;
    assert!(t.sim.sends().is_empty(), "nothing during quiet hours");
    step_to(&t, &clock, bogota(5, 7, 5), Days::minutes(5)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let sends = t.sim.sends();
    assert_eq!(sends.len(), 2);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_the_balance_cannot_cover_is_reported_and_notified() {
    use axum::routing::post;
    let received = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/recepcion",
        post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}/recepcion", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut sim = sim_config();
    sim.accounts[0].balance = 2;
    let clock = Arc::new(ManualClock::new(bogota(4, 7, 50)));
    let t = spawn_app_with_clock(RULES, sim, clock.clone(), |c| {
        c.notify.insert(
            "recepcion".into(),
            recuerda::config::NotifyEndpoint {
                url: sink_url.clone(),
                timeout: Duration::from_secs(2),
            },
        );
        c.balance.notify = Some("recepcion".into());
        c.balance.alert_below = 1;
    })
    .await;
    let engine = t.app().engine.clone();
    for i in 0..3 {
        let body = json!({"mobile": format!("5730500000{i:02}"), "start": "2030-03-05T10:00:00-05:00", "paciente": "Ana"});
        engine.upsert_appointment(&format!("B{i}"), &body).unwrap();
    }
    super::engine::eventually("the guard read the balance", || async {
        engine.last_balance().map(|_| ())
    })
    .await;
    assert!(engine.balance_low().is_none(), "2 is above the alert level");
    // The third send will meet code 5 and wait for a top-up, so this does not `settle`.
    clock.set(bogota(4, 8, 0));
    let low = super::engine::eventually("the fan-out of 3 cannot be covered by 2", || async {
        engine.balance_low()
    })
    .await;
    assert!(
        low.contains("dia-antes") && low.contains('3') && low.contains('2'),
        "{low}"
    );
    let health = t
        .http
        .get(t.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(health["balance_low"], low.as_str());
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("recuerda_balance_low 1"), "{metrics}");
    super::engine::eventually("reception notified", || async {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let notes = received.lock().unwrap().clone();
    assert!(
        notes.iter().all(|n| n["alert"] == "low_balance"),
        "{notes:?}"
    );
    // Once a day: one occasion (a notification retried after a slow answer may arrive twice).
    let alerts = engine
        .store
        .outbox_entries()
        .filter_map(Result::ok)
        .filter(|e| e.rule == "balance-guard")
        .count();
    assert_eq!(alerts, 1);
    // Topped up: the paused send goes.
    t.sim.set_balance(super::engine::LOGIN, 100).unwrap();
    // The paused dispatcher polls the balance on the engine's clock.
    clock.set(bogota(4, 8, 1));
    super::engine::eventually("all three sent", || async {
        (t.sim.sends().len() == 3).then_some(())
    })
    .await;
    t.shutdown().await;
}

/// A fan-out runs on several threads: every wanted appointment gets its reminder exactly once,
/// the others none, and a second firing by hand repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_on_several_threads_reminds_each_wanted_appointment_once() {
    let clock = Arc::new(ManualClock::new(bogota(4, 7, 55)));
    let t = spawn_app_with_clock(RULES, sim_config(), clock.clone(), |c| {
        c.provider.rate_per_second = 5_000;
    })
    .await;
    let engine = t.app().engine.clone();
    // 300 tomorrow (several batches per thread); every fifth is cancelled.
    for i in 0..300 {
        let start = bogota(5, 7, 0) + Days::minutes(2 * i);
        let status = if i % 5 == 0 { "cancelled" } else { "scheduled" };
        let body = json!({
            "mobile": format!("573040{i:06}"),
            "start": start.to_rfc3339(),
            "paciente": "Ana",
            "status": status,
        });
        engine
            .upsert_appointment(&format!("F{i:03}"), &body)
            .unwrap();
    }
    settle(&t).await;
    step_to(&t, &clock, bogota(4, 8, 0), Days::minutes(1)).await;
    super::engine::eventually("the 240 reminders reach the provider", || async {
        (sends_of(&t, 990) >= 240).then_some(())
    })
    .await;
    settle(&t).await;
    let mut reminded: Vec<String> = t
        .sim
        .sends()
        .iter()
        .filter(|s| s.template_id == 990)
        .map(|s| s.mobile.clone())
        .collect();
    reminded.sort();
    let expected: Vec<String> = (0..300)
        .filter(|i| i % 5 != 0)
        .map(|i| format!("573040{i:06}"))
        .collect();
    assert_eq!(
        reminded, expected,
        "each scheduled appointment once, no cancelled one"
    );
    assert_eq!(
        engine.run_rule_now("dia-antes").unwrap(),
        0,
        "nothing repeats"
    );
    settle(&t).await;
    assert_eq!(sends_of(&t, 990), 240);
}
