//! Replays of a reply's reaction cut short at the points a review of the reply-written-once
//! and dispatcher-writes-hand-offs changes found dangerous: each state is what a SIGKILL at
//! that point leaves on disk, and the next start must complete the reaction exactly once.
use crate::engine::*;
use serde_json::json;
use std::time::Duration;

/// Books appointment `id` for `mobile` and waits for its booking confirmation to be sent.
async fn booked(t: &TestApp, id: &str, mobile: &str) {
    assert_eq!(t.put_appointment(id, appt(mobile)).await.status(), 201);
    eventually("booking confirmation sent", || async {
        t.sim
            .sends()
            .iter()
            .any(|s| s.mobile == mobile)
            .then_some(())
    })
    .await;
}

fn appt(mobile: &str) -> serde_json::Value {
    json!({"mobile": mobile, "start": "2030-11-26T15:30:00-05:00", "status": "scheduled",
           "paciente": "carlos", "profesional": "Dra. Gómez", "sede": "norte"})
}

fn lines(engine: &recuerda::engine::Engine, cf: &str, kind: &str) -> Vec<String> {
    engine
        .store
        .get_conversation(cf)
        .unwrap()
        .map(|c| {
            c.history
                .iter()
                .filter(|h| h.kind == kind)
                .map(|h| h.detail.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn entries_of_rule(
    engine: &recuerda::engine::Engine,
    rule: &str,
) -> Vec<recuerda::message::OutboxEntry> {
    engine
        .store
        .outbox_entries()
        .map(Result::unwrap)
        .filter(|e| e.rule == rule)
        .collect()
}

const RULES_W: &str = r#"
rules:
  - name: confirmacion-reserva
    trigger: {appointment: created}
    actions:
      - send: {template: 990, custom_field: "cita-{{appointment.id}}"}
      - set_state: esperando
  - name: confirma-w
    trigger:
      reply: {custom_field: "cita-*", text: "^1$"}
    where: {appointment.status: scheduled}
    actions:
      - send: {template: 991}
      - update_appointment: {status: confirmed}
"#;

/// The first run handed its send off (unwritten), wrote the appointment update, and a crash
/// came before its line and before the dispatcher's first write of the send. The rule's
/// `where` held when the reply was decided; it fails against the appointment the first run
/// changed, so a replay that asked again would lose the send. It does not ask: the decision
/// is in the reply's record.
#[tokio::test]
async fn a_replay_does_not_ask_a_where_its_first_run_answered() {
    let mut t = spawn_app(RULES_W, sim_config(), |_| {}).await;
    booked(&t, "W1", "573001110090").await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let now = chrono::Utc::now();
    let id = write_reply(
        &store,
        "573001110090",
        "cita-W1",
        now,
        Some("confirma-w"),
        "handled",
    );
    // The first run's update_appointment (written at once, before the line).
    let mut a = store.get_appointment("W1").unwrap().unwrap();
    a.status = recuerda::appointment::AppointmentStatus::Confirmed;
    store.put_appointment(&a).unwrap();
    store.durable().await.unwrap();
    drop(store);
    t.start_engine().await;
    let engine = &t.app().engine;
    eventually("the replay's line", || async {
        (lines(engine, "cita-W1", "reply") == ["1"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends = entries_of_rule(engine, "confirma-w");
    let fired = engine
        .store
        .fired(&recuerda::store::reply_occasion(
            &id.to_string(),
            "confirma-w",
        ))
        .unwrap();
    assert_eq!(
        sends.len(),
        1,
        "the send the first run decided; fired = {fired:?}"
    );
    assert!(fired.is_none(), "{fired:?}");
    t.shutdown().await;
}

/// A format-4 store SIGKILLed after a reply's reaction finished (its record, written last,
/// says `handled`; its line timed at the reaction's `now`, not `received_at`), the reply
/// still at or above the mark. Opened by format 5, the record keeps format 4's meaning (a
/// finished reaction): nothing is run again.
#[tokio::test]
async fn a_finished_reply_of_a_format_4_store_is_not_run_again() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    booked(&t, "F1", "573001110091").await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let received_at = chrono::Utc::now();
    let reacted_at = received_at + chrono::Duration::microseconds(37);
    let id = store.begin_reply();
    // What format 4 left of a finished reaction: line + state + send queued, record last.
    store
        .update_conversation("cita-F1", reacted_at, |c| {
            c.record(reacted_at, "reply", "1".into(), None);
            c.state = Some("confirmada".into());
            c.record(
                reacted_at,
                "queued",
                "template 991 queued".into(),
                Some("confirma"),
            );
        })
        .unwrap();
    let mut sent = recuerda::message::OutboxEntry::queued(
        format!(
            "{}#2",
            recuerda::store::reply_occasion(&id.to_string(), "confirma")
        ),
        recuerda::message::OutboxKind::Send,
        "confirma",
        2,
        reacted_at,
    );
    sent.custom_field = Some("cita-F1".into());
    sent.status = recuerda::message::MessageStatus::Sent;
    store.enqueue(&sent).unwrap();
    store
        .put_reply(&recuerda::conversation::Reply {
            id: id.to_string(),
            mobile: "573001110091".into(),
            message: "1".into(),
            custom_field: Some("cita-F1".into()),
            received_at,
            rule: Some("confirma".into()),
            outcome: "handled".into(),
        })
        .unwrap();
    store.durable().await.unwrap();
    drop(store);
    set_format_4(&t.config.data_dir);
    t.start_engine().await;
    let engine = &t.app().engine;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines(engine, "cita-F1", "reply"),
        ["1"],
        "a finished format-4 reaction replayed again"
    );
    assert_eq!(engine.store.inbox_depth(), 0);
    t.shutdown().await;
}

const RULES_N: &str = r#"
rules:
  - name: confirmacion-reserva
    trigger: {appointment: created}
    actions:
      - send: {template: 990, custom_field: "cita-{{appointment.id}}"}
      - set_state: esperando
  - name: confirma-n
    trigger:
      reply: {custom_field: "cita-*", text: "^1$"}
    actions:
      - send: {template: 991}
      - notify: {endpoint: recepcion, message: "confirmó"}
      - set_state: confirmada
"#;

/// A `send` before a `notify`: the notify writes the send's "queued" line mid-way, before the
/// reply's line. A rule with a `notify` writes its sends itself (pending, handed off) rather
/// than leave them to the dispatcher, so a crash after that mid-way write finds the send and
/// its line, and the replay adds neither again.
#[tokio::test]
async fn a_replay_after_a_notifys_write_adds_no_second_queued_line() {
    let mut t = spawn_app(RULES_N, sim_config(), |c| {
        c.notify.insert(
            "recepcion".into(),
            recuerda::config::NotifyEndpoint {
                url: "http://127.0.0.1:9/hook".into(),
                timeout: Duration::from_millis(200),
            },
        );
    })
    .await;
    booked(&t, "N1", "573001110092").await;
    t.stop_engine().await;
    let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
    let now = chrono::Utc::now();
    let id = write_reply(
        &store,
        "573001110092",
        "cita-N1",
        now,
        Some("confirma-n"),
        "handled",
    );
    // The first run's send, written by its reaction and handed off, then the notify's
    // mid-way write: the send's queued line.
    let mut send = recuerda::message::OutboxEntry::queued(
        format!(
            "{}#0",
            recuerda::store::reply_occasion(&id.to_string(), "confirma-n")
        ),
        recuerda::message::OutboxKind::Send,
        "confirma-n",
        0,
        now,
    );
    send.custom_field = Some("cita-N1".into());
    send.handed_off = true;
    store.enqueue(&send).unwrap();
    store
        .update_conversation("cita-N1", now, |c| {
            c.record(
                now,
                "queued",
                "template 991 queued".into(),
                Some("confirma-n"),
            );
        })
        .unwrap();
    store.durable().await.unwrap();
    drop(store);
    t.start_engine().await;
    let engine = &t.app().engine;
    eventually("the replay's line", || async {
        (lines(engine, "cita-N1", "reply") == ["1"]).then_some(())
    })
    .await;
    let q: Vec<String> = lines(engine, "cita-N1", "queued")
        .into_iter()
        .filter(|d| d.contains("991"))
        .collect();
    assert_eq!(q.len(), 1, "queued line doubled");
    let sends = entries_of_rule(engine, "confirma-n");
    assert_eq!(sends.iter().filter(|e| e.is_send()).count(), 1, "one send");
    t.shutdown().await;
}

/// A format-4 store's reply cut short (still `received`, at or above its mark): opened by
/// format 5, it is replayed, decided, and reacted to once — its record, below where the new
/// way starts, is written `received` first and with its decision last, as its format did —
/// and a further start adds nothing.
#[tokio::test]
async fn a_format_4_reply_cut_short_is_finished_once_after_the_upgrade() {
    let mut t = spawn_app(RULES, sim_config(), |_| {}).await;
    booked(&t, "U1", "573001110093").await;
    t.stop_engine().await;
    let now = chrono::Utc::now();
    let id = {
        let store = recuerda::store::Store::open(&t.config.data_dir).unwrap();
        let id = write_reply(
            &store,
            "573001110093",
            "cita-U1",
            now,
            None,
            recuerda::conversation::Reply::RECEIVED,
        );
        store.durable().await.unwrap();
        id
    };
    set_format_4(&t.config.data_dir);
    t.start_engine().await;
    let engine = &t.app().engine;
    assert!(engine.store.reply_record_is_older(&id.to_string()));
    eventually("the replayed reply's line", || async {
        (lines(engine, "cita-U1", "reply") == ["1"]).then_some(())
    })
    .await;
    let record = engine.store.get_reply(&id.to_string()).unwrap().unwrap();
    assert_eq!(
        (record.outcome.as_str(), record.rule.as_deref()),
        ("handled", Some("confirma"))
    );
    assert_eq!(entries_of_rule(engine, "confirma").len(), 1);

    t.stop_engine().await;
    t.start_engine().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let engine = &t.app().engine;
    assert_eq!(lines(engine, "cita-U1", "reply"), ["1"]);
    assert_eq!(entries_of_rule(engine, "confirma").len(), 1);
    t.shutdown().await;
}

fn set_format_4(dir: &std::path::Path) {
    // The store's lock may outlive its last handle for a moment.
    let mut tries = 0;
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    db.open_tree("meta")
        .unwrap()
        .insert("format_version", "4")
        .unwrap();
    db.flush().unwrap();
}
