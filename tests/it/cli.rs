//! Tests of the `recuerda` binary: `send`, `balance` and `templates` against a raw test server.

use crate::provider::{raw_server, Answer, RawServer, LOGIN, TOKEN};
use std::path::{Path, PathBuf};
use std::process::Output;

struct Workspace {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Workspace {
    fn new(server: &RawServer, token: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("recuerda.yaml");
        std::fs::write(
            &config,
            format!(
                "provider:\n  base_url: {}\n  login: {LOGIN}\n  token: {token}\n  connect_timeout: 1s\n  timeout: 2s\ntemplates_dir: templates\n",
                server.base_url()
            ),
        )
        .unwrap();
        Workspace { dir, config }
    }

    fn templates(&self) -> PathBuf {
        self.dir.path().join("templates")
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_recuerda"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_remove("RECUERDA_PROVIDER_LOGIN")
            .env_remove("RECUERDA_PROVIDER_TOKEN")
            .env_remove("RECUERDA_LOG")
            .output()
            .await
            .unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failed command: exit 1, one line on stderr starting with `error: `, containing `fragment`.
fn assert_one_line_error(output: &Output, fragment: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(fragment), "expected `{fragment}` in: {err}");
    assert!(!err.contains(TOKEN), "token leaked: {err}");
}

#[tokio::test]
async fn balance_prints_the_balance() {
    let server = raw_server(Answer::Body(
        200,
        r#"{"balance": "163", "status": "success"}"#.into(),
    ))
    .await;
    let ws = Workspace::new(&server, TOKEN);
    let output = ws.run(&["balance"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "163\n");
    assert_eq!(server.requests()[0].value("token"), Some(TOKEN));
}

#[tokio::test]
async fn wrong_token_prints_the_code_2_line_and_exits_1() {
    let server = raw_server(Answer::Body(
        200,
        r#"{"code": 2, "status": "Invalido usuario y/o password"}"#.into(),
    ))
    .await;
    let ws = Workspace::new(&server, "wrong-token-0123456789");
    for args in [
        &["balance"][..],
        &["templates"],
        &["send", "--template", "990", "--to", "3102334455"],
    ] {
        let output = ws.run(args).await;
        assert_one_line_error(
            &output,
            "provider refused the login (code 2): check `provider.login` and `provider.token`",
        );
        assert!(
            !stderr(&output).contains("wrong-token"),
            "{}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn missing_token_says_where_to_put_it() {
    let server = raw_server(Answer::Body(200, "{}".into())).await;
    let ws = Workspace::new(&server, "");
    std::fs::write(
        &ws.config,
        format!(
            "provider:\n  base_url: {}\n  login: {LOGIN}\n",
            server.base_url()
        ),
    )
    .unwrap();
    let output = ws.run(&["balance"]).await;
    assert_one_line_error(&output, "`provider.token`");
    assert!(stderr(&output).contains("RECUERDA_PROVIDER_TOKEN"));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn send_prints_the_message_id() {
    let server = raw_server(Answer::Body(
        200,
        r#"{"code": 1, "status": "mensaje enviado", "messageId": "0e1add43-f91c-4e7c-8805-221ef6b27b98"}"#
            .into(),
    ))
    .await;
    let ws = Workspace::new(&server, TOKEN);
    let output = ws
        .run(&[
            "send",
            "--template",
            "990",
            "--to",
            "+57 310 233 4455",
            "--var",
            "Carlos",
            "--var",
            "$100",
            "--var",
            "miércoles",
            "--custom-field",
            "cita-7",
        ])
        .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "0e1add43-f91c-4e7c-8805-221ef6b27b98\n");
    let request = &server.requests()[0];
    assert_eq!(request.value("mobile"), Some("573102334455"));
    assert_eq!(
        request.value("template_variables"),
        Some("[Carlos] [$100] [miércoles]")
    );
    assert_eq!(request.value("custom_field"), Some("cita-7"));
    assert_eq!(request.value("media"), None);
}

#[tokio::test]
async fn invalid_send_is_refused_before_any_call() {
    let server = raw_server(Answer::Body(200, "{}".into())).await;
    let ws = Workspace::new(&server, TOKEN);
    let long_field = "x".repeat(1_001);
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--to", "601 234 5678"], "landline"),
        (vec!["--to", "+1 212 555 0100"], "not Colombian"),
        (vec!["--to", "3102334455", "--var", "[x]"], "contains `[`"),
        (vec!["--to", "3102334455", "--var", " "], "is empty"),
        (
            vec!["--to", "3102334455", "--media", "https://x.example/a.exe"],
            "`.exe`",
        ),
        (
            vec!["--to", "3102334455", "--custom-field", &long_field],
            "1001 characters",
        ),
    ];
    for (extra, fragment) in cases {
        let mut args = vec!["send", "--template", "990"];
        args.extend(extra);
        let output = ws.run(&args).await;
        assert_one_line_error(&output, fragment);
        assert!(
            stderr(&output).contains("nothing was sent"),
            "{}",
            stderr(&output)
        );
    }
    let output = ws
        .run(&["send", "--template", "abc", "--to", "3102334455"])
        .await;
    assert_one_line_error(&output, "template id `abc` is not a number");

    // A local template file fixes the variable count.
    std::fs::create_dir_all(ws.templates()).unwrap();
    std::fs::write(
        ws.templates().join("990-recordatorio.yaml"),
        "id: 990\nname: Recordatorio\nbody: \"Hola {1}, su cita es el {2}\"\nvariables: [a, b]\n",
    )
    .unwrap();
    let output = ws
        .run(&[
            "send",
            "--template",
            "990",
            "--to",
            "3102334455",
            "--var",
            "Carlos",
        ])
        .await;
    assert_one_line_error(&output, "2 placeholders but 1 variables");
    assert!(
        server.requests().is_empty(),
        "no call may reach the provider"
    );
}

const REMOTE_TEMPLATES: &str = r#"[
  {"nombre_plantilla": "Asignación de cita",
   "plantilla_aprobada": "¡Hola *{1}*! Su cita con *{2}*\n\nFecha y hora: *{3}*",
   "status": "success"},
  {"id_template": 990, "nombre_plantilla": "Recordatorio de cita",
   "plantilla_aprobada": "Hola *{1}*, le recordamos su cita con *{2}* el *{3}*.", "status": "success"},
  {"id_template": "995", "nombre_plantilla": "Cita cancelada",
   "plantilla_aprobada": "{1}, su cita del {2} fue cancelada.", "status": "success"}
]"#;

#[tokio::test]
async fn templates_lists_id_name_status_count_and_one_line_body() {
    let server = raw_server(Answer::Body(200, REMOTE_TEMPLATES.into())).await;
    let ws = Workspace::new(&server, TOKEN);
    let output = ws.run(&["templates"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID"), "{out}");
    let assignment = lines[1];
    assert!(assignment.starts_with("-  "), "{out}");
    assert!(assignment.contains("Asignación de cita"), "{out}");
    assert!(assignment.contains("success"), "{out}");
    assert!(assignment.contains("  3  "), "{out}");
    assert!(
        assignment.contains(r"Su cita con *{2}*\n\nFecha y hora: *{3}*"),
        "{out}"
    );
    assert!(lines[2].starts_with("990"), "{out}");
    assert!(lines[3].starts_with("995"), "{out}");
    assert!(!ws.templates().exists(), "listing writes nothing");
}

fn read_yaml(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn templates_pull_updates_by_name_creates_by_id_and_reports_the_rest() {
    let server = raw_server(Answer::Body(200, REMOTE_TEMPLATES.into())).await;
    let ws = Workspace::new(&server, TOKEN);
    std::fs::create_dir_all(ws.templates()).unwrap();
    let existing = ws.templates().join("990-recordatorio.yaml");
    std::fs::write(
        &existing,
        "# Recordatorio del día anterior\nid: 990\nname: Recordatorio de cita\nbody: \"Hola *{1}*, cita con *{2}* el *{3}* a las *{4}*.\"\nvariables:\n  - \"{{primer_nombre appointment.paciente}}\"\n  - \"{{appointment.profesional}}\"\n  - \"{{fecha appointment.start}}\"\n  - \"{{hora appointment.start}}\"\n",
    )
    .unwrap();

    let output = ws.run(&["templates", "--pull"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let err = stderr(&output);

    // Updated by name: id and variables kept, body replaced, header comment kept.
    let updated = read_yaml(&existing);
    assert_eq!(updated["id"], 990);
    assert_eq!(
        updated["body"],
        "Hola *{1}*, le recordamos su cita con *{2}* el *{3}*."
    );
    assert_eq!(updated["variables"].as_sequence().unwrap().len(), 4);
    assert_eq!(
        updated["variables"][0],
        "{{primer_nombre appointment.paciente}}"
    );
    assert!(std::fs::read_to_string(&existing)
        .unwrap()
        .starts_with("# Recordatorio del día anterior\n"));
    assert!(
        err.contains("has 3 placeholders but the file's `variables` has 4"),
        "{err}"
    );

    // Created by id, with placeholder variables and a comment saying to edit them.
    let created = ws.templates().join("995-cita-cancelada.yaml");
    let text = std::fs::read_to_string(&created).unwrap();
    assert!(text.starts_with("# Pulled from the provider"), "{text}");
    assert!(text.contains("EDIT `variables`"), "{text}");
    let created = read_yaml(&created);
    assert_eq!(created["id"], 995);
    assert_eq!(created["name"], "Cita cancelada");
    assert_eq!(created["body"], "{1}, su cita del {2} fue cancelada.");
    assert_eq!(created["variables"].as_sequence().unwrap().len(), 2);

    // No id and no file: reported, not written, with how to add it.
    assert!(
        err.contains("template `Asignación de cita` has no id"),
        "{err}"
    );
    assert!(err.contains("asignacion-de-cita.yaml"), "{err}");
    let files: Vec<_> = std::fs::read_dir(ws.templates()).unwrap().collect();
    assert_eq!(files.len(), 2, "no temporary files left behind");
    assert!(
        out.contains("1 created, 1 updated, 0 unchanged, 1 not written"),
        "{out}"
    );

    // A second pull changes nothing.
    let output = ws.run(&["templates", "--pull"]).await;
    assert!(
        stdout(&output).contains("0 created, 0 updated, 2 unchanged"),
        "{}",
        stdout(&output)
    );
}
