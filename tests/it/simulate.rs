//! `recuerda simulate`: the real binary over the shipped rules and templates, on a fake clock,
//! with the in-process simulator as the provider.

use crate::engine::{sim_config, spawn_app, API_TOKEN};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const APPOINTMENTS: &str = r#"[
  {"id": "A1", "mobile": "+57 300 555 0101", "start": "2026-11-27 15:30", "estado": "programada",
   "paciente": "Carlos Pérez", "profesional": "Dra. Gómez", "sede": "norte"},
  {"id": "A2", "mobile": "3005550102", "start": "2026-11-27 09:00", "status": "scheduled",
   "paciente": "María Gómez", "profesional": "Dr. Salazar", "sede": "centro"},
  {"id": "A3", "mobile": "3005550103", "start": "2026-11-26T15:00:00-05:00", "status": "confirmed",
   "paciente": "Andrés López", "profesional": "Dr. Salazar", "sede": "centro"}
]"#;

fn simulate(dir: &Path, extra: &[&str]) -> (Output, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .args([
            "simulate",
            "--from",
            "2026-11-26 07:00",
            "--to",
            "2026-11-26 20:00",
        ])
        .args(extra)
        .current_dir(dir)
        // Real-looking credentials in the environment must not matter: nothing goes out.
        .env("RECUERDA_PROVIDER_LOGIN", "clinica@real.example")
        .env("RECUERDA_PROVIDER_TOKEN", "real-token-never-used")
        .output()
        .expect("recuerda runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// Simulates `APPOINTMENTS` under a config of its own in `dir`: the rules in `rules`, the
/// shipped templates, a `recepcion` notify endpoint and `config` (more YAML lines).
fn simulate_in(dir: &Path, rules: &Path, config: &str, extra: &[&str]) -> (Output, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let appointments = dir.join("citas.json");
    std::fs::write(&appointments, APPOINTMENTS).unwrap();
    let path = dir.join("recuerda.yaml");
    std::fs::write(
        &path,
        format!(
            "rules_dir: {}\ntemplates_dir: {}\nnotify: {{recepcion: {{url: http://127.0.0.1:9/recepcion}}}}\n{config}",
            rules.display(),
            root.join("templates").display()
        ),
    )
    .unwrap();
    let mut args = vec![
        "--config",
        path.to_str().unwrap(),
        "--appointments",
        appointments.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    simulate(dir, &args)
}

/// The index of the first timeline line holding every part, or a panic showing the output.
fn line_of(stdout: &str, parts: &[&str]) -> usize {
    stdout
        .lines()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{stdout}"))
}

#[test]
fn a_clinic_day_over_the_shipped_rules() {
    let dir = tempfile::tempdir().unwrap();
    let appointments = dir.path().join("citas.json");
    std::fs::write(&appointments, APPOINTMENTS).unwrap();
    let replies = dir.path().join("respuestas.yaml");
    std::fs::write(&replies, "- {appointment: A1, text: \"1\", after: 30m}\n").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let started = Instant::now();
    let (out, stdout) = simulate(
        Path::new(root),
        &[
            "--appointments",
            appointments.to_str().unwrap(),
            "--replies",
            replies.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a simulated day takes {:?}",
        started.elapsed()
    );

    // The day-before reminders at 8:00, with the rendered Spanish text under them.
    let reminder = line_of(
        &stdout,
        &["2026-11-26 08:00  recordatorio-dia-antes → 57300****101 (cita A1): template 990"],
    );
    assert_eq!(
        stdout.lines().nth(reminder + 1).map(str::trim),
        Some("Hola *Carlos*, le recordamos su cita con *Dra. Gómez* el *viernes 27 de noviembre* a las *3:30 p. m.*. Responda 1 para confirmar o 2 para cancelar.")
    );
    line_of(
        &stdout,
        &["2026-11-26 08:00  recordatorio-dia-antes → 57300****102 (cita A2)"],
    );
    // A1 answers `1` half an hour later and is confirmed.
    let reply = line_of(
        &stdout,
        &["2026-11-26 08:30  ← 57300****101 (cita A1) replied \"1\" → rule confirma"],
    );
    let confirmation = line_of(
        &stdout,
        &["2026-11-26 08:30  confirma → 57300****101 (cita A1): template 991"],
    );
    assert!(stdout
        .lines()
        .nth(confirmation + 1)
        .is_some_and(|l| l.contains("¡Gracias, *Carlos*! Su cita del *viernes 27 de noviembre* a las *3:30 p. m.* quedó confirmada.")));
    // A2 does not answer: the follow-up 4 h after the reminder; A1, who answered, gets none.
    let follow_up = line_of(
        &stdout,
        &["2026-11-26 12:00  sin-respuesta → 57300****102 (cita A2): template 994"],
    );
    assert!(!stdout.contains("sin-respuesta → 57300****101"), "{stdout}");
    // Today's appointment: the 2 h reminder at 13:00, the survey 2 h after it.
    let two_hours = line_of(
        &stdout,
        &["2026-11-26 13:00  recordatorio-2h → 57300****103 (cita A3): template 993"],
    );
    assert!(stdout.contains("es hoy a las *3:00 p. m.*"), "{stdout}");
    let survey = line_of(
        &stdout,
        &["2026-11-26 17:00  encuesta-satisfaccion → 57300****103 (cita A3)"],
    );
    assert!(reminder < reply && reply < confirmation && confirmation < follow_up);
    assert!(follow_up < two_hours && two_hours < survey);

    // Every timeline line is in time order, within the period.
    let times: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("2026-"))
        .map(|l| &l[..16])
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{stdout}");
    assert!(times
        .iter()
        .all(|t| ("2026-11-26 07:00"..="2026-11-26 20:00").contains(t)));

    // Nothing reached a real host: the provider in use was the in-process simulator, which got
    // exactly the sends the timeline shows; no full mobile and no credential is printed.
    let sends = stdout.lines().filter(|l| l.contains(" → 57300")).count();
    assert_eq!(sends, 6, "{stdout}");
    assert!(
        stdout.contains("provider: the in-process simulator at http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the simulator received 6 sends"),
        "{stdout}"
    );
    assert!(!stdout.contains("contacto-virtual.com"), "{stdout}");
    for hidden in [
        "573005550101",
        "real-token-never-used",
        "clinica@real.example",
    ] {
        assert!(
            !stdout.contains(hidden) && !stderr.contains(hidden),
            "`{hidden}` printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_the_running_engines_appointments_are_simulated() {
    let t = spawn_app(crate::engine::RULES, sim_config(), |_| {}).await;
    let r = t
        .put_appointment(
            "S1",
            serde_json::json!({"mobile": "3005550109", "start": "2026-11-27T10:00:00-05:00",
                "paciente": "Laura Jiménez", "profesional": "Dra. Gómez", "sede": "norte"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = dir.path().join("recuerda.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}\nrules_dir: {}\ntemplates_dir: {}\napi: {{token: {API_TOKEN}}}\nnotify: {{recepcion: {{url: http://127.0.0.1:9/recepcion}}}}\n",
            t.app().addr,
            root.join("rules").display(),
            root.join("templates").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let (out, stdout) =
        tokio::task::spawn_blocking(move || simulate(Path::new("."), &["--config", &config]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 appointments from the engine at http://"),
        "{stdout}"
    );
    line_of(
        &stdout,
        &["2026-11-26 08:00  recordatorio-dia-antes → 57300****109 (cita S1)"],
    );
    t.shutdown().await;

    // No engine and no file: say what to do.
    let (out, _) = simulate(Path::new("."), &["--url", "http://127.0.0.1:9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--appointments FILE"), "{stderr}");
}

#[test]
fn quiet_hours_hold_the_reminders_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (out, stdout) = simulate_in(
        dir.path(),
        &root.join("rules"),
        "quiet_hours: {from: \"08:00\", to: \"09:00\"}\n",
        &[],
    );
    assert!(out.status.success(), "{stdout}");
    line_of(
        &stdout,
        &["2026-11-26 09:00  recordatorio-dia-antes → 57300****101 (cita A1): template 990 (queued at 2026-11-26 08:00; held by quiet hours)"],
    );
    assert!(
        !stdout.contains("08:00  recordatorio-dia-antes →"),
        "{stdout}"
    );
}

/// `--delivery read`: each message sent is delivered a minute later and read ten minutes
/// later, so `status:` rules run in the timeline; without it, none do.
#[test]
fn delivery_events_run_status_rules_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for file in std::fs::read_dir(root.join("rules")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, rules.join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        rules.join("90-leido.yaml"),
        "rules:\n  - name: aviso-leido\n    trigger: {status: read, rule: recordatorio-dia-antes}\n    actions:\n      - notify: {endpoint: recepcion, message: \"{{appointment.paciente}} leyó el recordatorio\"}\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let (out, stdout) = simulate_in(dir.path(), &rules, "", extra);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    let stdout = run(&["--delivery", "read"]);
    // The day-before reminders go at 8:00; each is read at 8:10.
    line_of(&stdout, &["2026-11-26 08:00  recordatorio-dia-antes →"]);
    let read = line_of(&stdout, &["2026-11-26 08:10", "aviso-leido", "recepcion"]);
    assert!(
        stdout
            .lines()
            .nth(read)
            .is_some_and(|l| l.contains("notify")),
        "{stdout}"
    );
    line_of(&stdout, &["delivery events:", "delivered, then read"]);

    let stdout = run(&[]);
    assert!(!stdout.contains("aviso-leido"), "{stdout}");
    line_of(&stdout, &["delivery events: none"]);
}
