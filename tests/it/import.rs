//! `recuerda import`: the real binary against an engine started in-process, over its API.

use crate::engine::{sim_config, spawn_app, TestApp, API_TOKEN};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

/// No `appointment: created` rule: importing thousands of rows sends nothing.
const QUIET_RULES: &str = r#"
rules:
  - name: confirma
    trigger:
      reply: {custom_field: "cita-*", text: "^1$"}
    actions:
      - set_state: confirmada
"#;

async fn engine() -> TestApp {
    spawn_app(QUIET_RULES, sim_config(), |_| {}).await
}

/// A config file pointing `listen` and `api.token` at the test's engine.
fn config_for(t: &TestApp, dir: &Path) -> PathBuf {
    let path = dir.join("recuerda.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {}\ntimezone: America/Bogota\napi:\n  token: {API_TOKEN}\n",
            t.app().addr
        ),
    )
    .unwrap();
    path
}

async fn import(config: &Path, args: &[&str]) -> (Output, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .arg("--config")
        .arg(config)
        .arg("import")
        .args(args)
        .env_remove("RECUERDA_API_TOKEN")
        .env("RECUERDA_LOG", "warn")
        .output()
        .await
        .expect("recuerda runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

async fn stored(t: &TestApp) -> Vec<Value> {
    let list = t
        .get("/api/v1/appointments?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z")
        .await;
    list["appointments"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_with_two_bad_ones_import_nothing_unless_told() {
    let t = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&t, dir.path());
    // Spanish headers, local times, Spanish statuses; line 1 is the header, row i is line i + 2.
    let mut csv = String::from("cita,celular,fecha_hora,estado,paciente,profesional\n");
    for i in 0..10_000 {
        let line = i + 2;
        let mobile = if line == 7 {
            "311 12".to_string()
        } else {
            format!("3{:09}", 100_000_000 + i)
        };
        let start = if line == 5_003 {
            "mañana a las 3".to_string()
        } else {
            format!(
                "2026-12-{:02} {:02}:{:02}",
                1 + i % 28,
                7 + i % 10,
                (i % 4) * 15
            )
        };
        let status = if line == 5_003 {
            "perdida"
        } else {
            "programada"
        };
        writeln!(
            csv,
            "C{i:05},{mobile},{start},{status},\"Paciente {i}, de prueba\",Dra. Gómez"
        )
        .unwrap();
    }
    let file = dir.path().join("citas.csv");
    std::fs::write(&file, csv).unwrap();
    let file = file.to_str().unwrap();

    let (out, stdout, stderr) = import(&config, &[file]).await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let reported: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(reported.len(), 2, "every bad row, once each:\n{stderr}");
    assert!(reported[0].starts_with("line 7: mobile: "), "{stderr}");
    assert!(
        reported[1].starts_with("line 5003: start: `mañana a las 3` is not a time")
            && reported[1].contains("; status: "),
        "both problems of the row, in one line:\n{stderr}"
    );
    assert!(
        stderr.contains("2 of 10000 rows are invalid") && stderr.contains("nothing imported"),
        "{stderr}"
    );
    assert!(stored(&t).await.is_empty(), "nothing was imported");

    let (out, stdout, stderr) = import(&config, &["--skip-invalid", file]).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "imported 9998 appointments (9998 new, 0 updated); 2 invalid rows skipped"
    );
    let list = stored(&t).await;
    assert_eq!(list.len(), 9_998);
    let first = t.get("/api/v1/appointments/C00000").await;
    assert_eq!(first["start"], "2026-12-01T07:00:00-05:00");
    assert_eq!(first["status"], "scheduled");
    assert_eq!(first["mobile"], "573100000000");
    assert_eq!(first["paciente"], "Paciente 0, de prueba");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_spanish_statuses_local_times_and_a_header_map() {
    let t = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&t, dir.path());
    let file = dir.path().join("citas.json");
    std::fs::write(
        &file,
        r#"[
  {"Nro Cita": 1001, "Móvil": "+57 310 233 4455", "Fecha Hora": "26/11/2026 15:30",
   "Estado": "Confirmada", "Nombre": "Carlos Pérez"},
  {"Nro Cita": "1002", "Móvil": 3102334456, "Fecha Hora": "2026-11-26T16:00",
   "Estado": "cancelada", "Nombre": "María Gómez"},
  {"Nro Cita": "1003", "Móvil": "3102334457", "Fecha Hora": "2026-11-26T17:00:00-05:00",
   "Estado": "no_asistio", "Nombre": "Ana Díaz"}
]"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let map = ["--map", "Nro Cita=id", "--map", "nombre=paciente"];

    let (out, stdout, stderr) = import(&config, &[&map[..], &["--dry-run", file]].concat()).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("dry run: 3 valid rows, 0 invalid"),
        "{stdout}"
    );
    assert!(stored(&t).await.is_empty(), "a dry run imports nothing");

    let (out, stdout, stderr) = import(&config, &[&map[..], &[file]].concat()).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "imported 3 appointments (3 new, 0 updated)");
    let a = t.get("/api/v1/appointments/1001").await;
    assert_eq!(a["start"], "2026-11-26T15:30:00-05:00");
    assert_eq!(a["status"], "confirmed");
    assert_eq!(a["paciente"], "Carlos Pérez");
    assert_eq!(a["mobile"], "573102334455");
    let b = t.get("/api/v1/appointments/1002").await;
    assert_eq!(
        (b["status"].as_str(), b["start"].as_str()),
        (Some("cancelled"), Some("2026-11-26T16:00:00-05:00"))
    );
    assert_eq!(
        t.get("/api/v1/appointments/1003").await["status"],
        "no_show"
    );

    // The same file again updates in place.
    let (out, stdout, _) = import(&config, &[&map[..], &[file]].concat()).await;
    assert!(out.status.success());
    assert_eq!(stdout.trim(), "imported 3 appointments (0 new, 3 updated)");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mapping_delimiters_duplicates_and_a_stopped_engine() {
    let t = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&t, dir.path());
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };

    // Excel in Spanish: `;` between columns; a column with an unknown name needs `--map`.
    let semicolons = write(
        "agenda.csv",
        "Código;Teléfono;Inicio;Sede\nX1;310 233 4455;2026-11-26 08:00;norte\n",
    );
    let (out, _, stderr) = import(&config, &[&semicolons]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("no column gives `id`") && stderr.contains("--map COLUMN=id"),
        "{stderr}"
    );
    let (out, stdout, stderr) = import(&config, &["--map", "codigo=id", &semicolons]).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let x1 = t.get("/api/v1/appointments/X1").await;
    assert_eq!(x1["sede"], "norte");
    assert_eq!(x1["start"], "2026-11-26T08:00:00-05:00");

    // Two columns that both look like the mobile: the user must choose.
    let two = write(
        "dos.csv",
        "id,celular,telefono,start\nX2,3102334455,6011234567,2026-11-26 08:00\n",
    );
    let (out, _, stderr) = import(&config, &[&two]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--map \"celular=mobile\""), "{stderr}");
    let (out, _, stderr) = import(&config, &["--map", "celular=mobile", &two]).await;
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        t.get("/api/v1/appointments/X2").await["telefono"],
        "6011234567"
    );

    // A repeated id names both lines.
    let dup = write(
        "dup.csv",
        "id,mobile,start\nD1,3102334455,2026-11-26 08:00\nD2,3102334456,2026-11-26 09:00\nD1,3102334457,2026-11-26 10:00\n",
    );
    let (out, _, stderr) = import(&config, &[&dup]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("line 4: id: `D1` is also on line 2"),
        "{stderr}"
    );

    // No engine listening: say how to start one.
    let url = format!("http://{}", t.app().addr);
    t.shutdown().await;
    let ok = write(
        "ok.csv",
        "id,mobile,start\nK1,3102334455,2026-11-26 08:00\n",
    );
    let (out, _, stderr) = import(&config, &["--url", &url, &ok]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("start `recuerda serve` first"), "{stderr}");
}
