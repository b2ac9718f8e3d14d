//! Tests of rule and template files: the broken-files corpus (snapshots of every diagnostic,
//! with line and column), the shipped examples, reply routing, conditions, time windows, cron,
//! rendering of sends, and the `check` and `preview` commands through the real binary.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::America::Bogota;
use recuerda::config::Config;
use recuerda::rules::{RuleSet, StartsSelector, Trigger};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config() -> Config {
    Config::from_yaml(
        "notify: {recepcion: {url: \"http://127.0.0.1:9/recepcion\"}}\n",
        None,
        &BTreeMap::new(),
    )
    .unwrap()
}

/// All diagnostics of loading `rules_dir` and `templates_dir`, as `check` prints them.
fn diagnostics(rules_dir: &Path, templates_dir: &Path) -> String {
    let diagnostics = match RuleSet::load(rules_dir, templates_dir, &config()) {
        Ok(loaded) => loaded.warnings,
        Err(e) => e.diagnostics,
    };
    diagnostics
        .iter()
        .map(|d| format!("{d}\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every folder under `tests/diagnostics/cases/` is a broken rule set; its diagnostics are
/// snapshotted in `tests/diagnostics/snapshots/`. Paths are relative to the crate root, so
/// the snapshots read like `check` output.
#[test]
fn broken_files_corpus() {
    let cases = Path::new("tests/diagnostics/cases");
    let mut names: Vec<String> = std::fs::read_dir(cases)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "the corpus has {} cases", names.len());
    for name in names {
        let case = cases.join(&name);
        let templates = if case.join("templates").is_dir() {
            case.join("templates")
        } else {
            PathBuf::from("tests/diagnostics/templates")
        };
        let output = diagnostics(&case.join("rules"), &templates);
        assert!(!output.is_empty(), "case {name} found no problem");
        insta::with_settings!({
            snapshot_path => "../diagnostics/snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name, output);
        });
    }
}

/// Spot checks that do not rely on reading snapshots: exact line and column.
#[test]
fn diagnostics_point_at_line_and_column() {
    let shared = Path::new("tests/diagnostics/templates");
    let cases = Path::new("tests/diagnostics/cases");
    let out = diagnostics(&cases.join("02-unknown-keys/rules"), shared);
    assert!(
        out.contains("error: rule `uno`: unknown key `triger` in the rule\n  --> tests/diagnostics/cases/02-unknown-keys/rules/a.yaml:3:5\n  = hint: did you mean `trigger`?"),
        "{out}"
    );
    let out = diagnostics(&cases.join("14-variable-count/rules"), shared);
    assert!(
        out.contains("error: rule `confirma`: template `991` has 3 placeholders but the rule gives 2 variables\n  --> tests/diagnostics/cases/14-variable-count/rules/a.yaml:8:13"),
        "{out}"
    );
    // The unknown helper's name `horas` (after `{{`) starts at column 91 of line 13.
    let out = diagnostics(&cases.join("15-handlebars/rules"), shared);
    assert!(
        out.contains("unknown helper `horas`: did you mean `hora`?\n  --> tests/diagnostics/cases/15-handlebars/rules/a.yaml:13:91"),
        "{out}"
    );
    let out = diagnostics(&cases.join("05-duplicate-names/rules"), shared);
    assert!(out.contains("b.yaml:3:11\n  = note: first defined here: tests/diagnostics/cases/05-duplicate-names/rules/a.yaml:2:11"), "{out}");
}

#[test]
fn missing_folders_are_named_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = RuleSet::load(
        &dir.path().join("reglas"),
        &dir.path().join("plantillas"),
        &config(),
    )
    .unwrap_err();
    let text = err
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("rules folder") && text.contains("reglas") && text.contains("does not exist"),
        "{text}"
    );
    assert!(
        text.contains("templates folder") && text.contains("`templates_dir`"),
        "{text}"
    );
}

#[test]
fn oversized_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let big = format!("rules: []\n# {}\n", "x".repeat(1024 * 1024));
    std::fs::write(rules.join("big.yaml"), big).unwrap();
    let err = RuleSet::load(&rules, &root().join("templates"), &config()).unwrap_err();
    assert!(
        err.diagnostics[0]
            .to_string()
            .contains("over the 1048576-byte limit"),
        "{:?}",
        err.diagnostics
    );
}

fn shipped() -> RuleSet {
    let root = root();
    let config = Config::load(Some(&root.join("recuerda.yaml"))).unwrap();
    match RuleSet::load(&config.rules_dir, &config.templates_dir, &config) {
        Ok(loaded) => {
            assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
            loaded.set
        }
        Err(e) => panic!(
            "shipped examples have problems:\n{}",
            e.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn shipped_examples_load_without_problems() {
    let set = shipped();
    for name in [
        "confirmacion-al-agendar",
        "recordatorio-dia-antes",
        "recordatorio-2h",
        "confirma",
        "cancela",
        "reprogramar",
        "ayuda",
        "sin-respuesta",
        "fallo-entrega",
        "encuesta-satisfaccion",
    ] {
        assert!(set.rule(name).is_some(), "missing shipped rule {name}");
    }
    for id in [101, 102, 990, 991, 992, 993, 994, 995] {
        assert!(set.templates.contains_key(&id), "missing template {id}");
    }
    let Trigger::Cron(cron) = &set.rule("recordatorio-dia-antes").unwrap().trigger else {
        panic!("recordatorio-dia-antes is not a cron rule");
    };
    assert_eq!(cron.normalized, "0 0 8 * * *");
}

#[test]
fn replies_route_in_order_and_first_match_wins() {
    let set = shipped();
    let route =
        |cf: Option<&str>, text: &str| set.match_reply(cf, text, None).map(|r| r.name.clone());
    assert_eq!(
        route(Some("cita-7"), "  Sí, confirmo ").as_deref(),
        Some("confirma")
    );
    assert_eq!(route(Some("cita-7"), "SI").as_deref(), Some("confirma"));
    assert_eq!(route(Some("cita-7"), "2").as_deref(), Some("cancela"));
    assert_eq!(
        route(Some("cita-7"), "no puedo").as_deref(),
        Some("cancela")
    );
    assert_eq!(route(Some("cita-7"), "3").as_deref(), Some("reprogramar"));
    // "10" starts with 1 but `\b` stops it: the catch-all answers.
    assert_eq!(route(Some("cita-7"), "10").as_deref(), Some("ayuda"));
    assert_eq!(route(Some("cita-7"), "hola?").as_deref(), Some("ayuda"));
    assert_eq!(
        route(Some("encuesta-7"), "5").as_deref(),
        Some("respuesta-encuesta")
    );
    assert_eq!(route(Some("encuesta-7"), "gracias"), None);
    assert_eq!(route(None, "1"), None);

    // Same text matched by two rules: the earlier file and rule win.
    let rules = |body: &str| (PathBuf::from("rules/x.yaml"), body.to_string());
    let loaded = RuleSet::load_sources(
        &[],
        &[
            rules("rules:\n  - name: b-primero\n    trigger: {reply: {text: \"^1\", state: esperando}}\n    actions: [{set_state: x}]\n"),
            rules("rules:\n  - name: a-segundo\n    trigger: {reply: {text: \"^1$\"}}\n    actions: [{set_state: y}]\n  - name: apagada\n    enabled: false\n    trigger: {reply: {text: \"^2$\"}}\n    actions: [{set_state: z}]\n"),
        ],
        &config(),
    )
    .unwrap();
    let set = loaded.set;
    assert_eq!(
        set.match_reply(None, "1", Some("esperando")).unwrap().name,
        "b-primero"
    );
    assert_eq!(
        set.match_reply(None, "1", Some("otro")).unwrap().name,
        "a-segundo"
    );
    assert!(
        set.match_reply(None, "2", None).is_none(),
        "a disabled rule never matches"
    );
}

fn one_rule(yaml: &str) -> RuleSet {
    let loaded = RuleSet::load_sources(
        &[(
            root().join("templates/990-recordatorio.yaml"),
            std::fs::read_to_string(root().join("templates/990-recordatorio.yaml")).unwrap(),
        )],
        &[(PathBuf::from("rules/t.yaml"), yaml.to_string())],
        &config(),
    );
    match loaded {
        Ok(l) => l.set,
        Err(e) => panic!(
            "{}",
            e.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn conditions_compare_sensibly() {
    let set = one_rule(
        "rules:\n  - name: c\n    trigger: {before: 2h}\n    where:\n      appointment.status: [scheduled, confirmed]\n      appointment.sede: norte\n      appointment.piso: 3\n      appointment.vip: true\n    actions: [{set_state: x}]\n",
    );
    let rule = set.rule("c").unwrap();
    let ctx = |status: &str, piso: serde_json::Value, vip: serde_json::Value| json!({"appointment": {"status": status, "sede": "norte", "piso": piso, "vip": vip}});
    assert!(rule.conditions_hold(&ctx("scheduled", json!(3), json!(true))));
    assert!(
        rule.conditions_hold(&ctx("confirmed", json!("3"), json!("true"))),
        "text compares with numbers and bools"
    );
    assert!(!rule.conditions_hold(&ctx("cancelled", json!(3), json!(true))));
    assert!(!rule.conditions_hold(&ctx("scheduled", json!(4), json!(true))));
    assert!(!rule.conditions_hold(&ctx("scheduled", json!(3), json!(false))));
    assert!(
        !rule.conditions_hold(&json!({"appointment": {"status": "scheduled"}})),
        "a missing path does not hold"
    );
    assert!(!rule.conditions_hold(&json!({})));
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn starts_windows_follow_the_bogota_calendar_around_midnight() {
    // 23:30 in Bogotá is already 04:30 UTC of the next day: "today" is still the 25th there.
    let fire = utc("2026-11-26T04:30:00Z");
    assert_eq!(
        StartsSelector::Today.window(fire, Bogota),
        (utc("2026-11-25T05:00:00Z"), utc("2026-11-26T05:00:00Z"))
    );
    assert_eq!(
        StartsSelector::Tomorrow.window(fire, Bogota),
        (utc("2026-11-26T05:00:00Z"), utc("2026-11-27T05:00:00Z"))
    );
    // Just after midnight in Bogotá, "tomorrow" moves on.
    let fire = utc("2026-11-26T05:00:00Z");
    assert_eq!(
        StartsSelector::Tomorrow.window(fire, Bogota).0,
        utc("2026-11-27T05:00:00Z")
    );
    let window = StartsSelector::Window {
        from: std::time::Duration::from_secs(2 * 3600),
        to: std::time::Duration::from_secs(3 * 3600),
    };
    assert_eq!(
        window.window(fire, Bogota),
        (utc("2026-11-26T07:00:00Z"), utc("2026-11-26T08:00:00Z"))
    );
}

#[test]
fn cron_next_after_is_strict_and_in_the_rule_zone() {
    let set = shipped();
    let Trigger::Cron(cron) = &set.rule("recordatorio-dia-antes").unwrap().trigger else {
        panic!("not cron");
    };
    // 08:00 in Bogotá is 13:00 UTC.
    assert_eq!(
        cron.next_after(utc("2026-11-25T12:00:00Z"), Bogota),
        Some(utc("2026-11-25T13:00:00Z"))
    );
    assert_eq!(
        cron.next_after(utc("2026-11-25T13:00:00Z"), Bogota),
        Some(utc("2026-11-26T13:00:00Z")),
        "strictly after"
    );
    assert_eq!(
        cron.next_after(
            Utc.with_ymd_and_hms(2026, 11, 25, 12, 59, 59).unwrap()
                + chrono::Duration::milliseconds(500),
            Bogota
        ),
        Some(utc("2026-11-25T13:00:00Z"))
    );
    // Day-of-month AND day-of-week, as the scheduler runs it: the 1st that is a Monday.
    let set = one_rule(
        "rules:\n  - name: c\n    trigger: {cron: \"0 8 1 * 1\"}\n    actions: [{set_state: x}]\n",
    );
    let Trigger::Cron(cron) = &set.rule("c").unwrap().trigger else {
        panic!()
    };
    assert_eq!(
        cron.next_after(utc("2026-11-25T00:00:00Z"), Bogota),
        Some(utc("2027-02-01T13:00:00Z"))
    );
}

#[test]
fn render_send_places_variables_and_refuses_brackets() {
    let set = one_rule("rules:\n  - name: r\n    trigger: {before: 2h}\n    actions:\n      - send: {template: 990, custom_field: \"cita-{{appointment.id}}\", variables: {1: \"{{appointment.paciente}}\"}}\n");
    let rule = set.rule("r").unwrap();
    let recuerda::rules::Action::Send(send) = &rule.actions[0] else {
        panic!()
    };
    let ctx = |paciente: &str| json!({"appointment": {"id": "42", "paciente": paciente, "profesional": "Dra. Gómez", "start": "2026-11-26T15:30:00-05:00"}});
    let rendered = set.render_send(rule, send, &ctx("Carlos")).unwrap();
    assert_eq!(rendered.custom_field.as_deref(), Some("cita-42"));
    assert_eq!(rendered.variables.len(), 4);
    assert_eq!(rendered.variables[0], "Carlos");
    assert!(
        rendered
            .text
            .starts_with("Hola *Carlos*, le recordamos su cita con *Dra. Gómez*"),
        "{}",
        rendered.text
    );
    let err = set
        .render_send(rule, send, &ctx("Carlos [VIP]"))
        .unwrap_err();
    assert!(
        err.message.contains("rule `r`")
            && err.message.contains("variable 1")
            && err.message.contains("Carlos [VIP]"),
        "{err}"
    );
    let err = set.render_send(rule, send, &ctx("  ")).unwrap_err();
    assert!(err.message.contains("is empty"), "{err}");
    let err = set
        .render_send(rule, send, &json!({"appointment": {"id": "42"}}))
        .unwrap_err();
    assert!(
        err.message.contains("rule `r`"),
        "a missing value is an error: {err}"
    );
}

fn recuerda(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .args(args)
        .current_dir(root())
        .env_remove("RECUERDA_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_on_the_shipped_examples() {
    let (code, stdout, stderr) = recuerda(&["check"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: 12 rules, 10 templates"), "{stdout}");
    let confirma = stdout.find("1.  confirma").expect("routing table");
    let ayuda = stdout.find("5.  ayuda").expect("routing table");
    assert!(confirma < ayuda, "{stdout}");
}

#[test]
fn check_fails_on_a_broken_folder_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recuerda.yaml");
    std::fs::write(
        &config,
        format!(
            "rules_dir: {}\ntemplates_dir: {}\n",
            root()
                .join("tests/diagnostics/cases/13-unknown-template/rules")
                .display(),
            root().join("tests/diagnostics/templates").display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = recuerda(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("error: rule `id-inexistente`: template `999` is not in templates/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("13-unknown-template/rules/a.yaml:5:26"),
        "{stdout}"
    );
    assert!(stdout.contains("2 errors"), "{stdout}");
    assert!(stderr.starts_with("error: 2 problems in"), "{stderr}");
    assert!(stderr.contains("run `recuerda check` again"), "{stderr}");
}

#[test]
fn preview_prints_the_final_text_and_form_fields() {
    let dir = tempfile::tempdir().unwrap();
    let appointment = dir.path().join("cita-123.json");
    std::fs::write(
        &appointment,
        r#"{"id": "123", "mobile": "+57 310 233 4455", "start": "2026-11-26T15:30:00-05:00", "status": "scheduled",
            "paciente": "Carlos Pérez", "profesional": "Dra. Gómez", "sede": "norte"}"#,
    )
    .unwrap();
    let path = appointment.to_str().unwrap();
    let (code, stdout, stderr) = recuerda(&[
        "preview",
        "recordatorio-dia-antes",
        "--appointment",
        path,
        "--at",
        "2026-11-25 08:00",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("now: 2026-11-25T08:00:00-05:00"),
        "{stdout}"
    );
    assert!(stdout.contains("   | Hola *Carlos"), "{stdout}");
    assert!(
        stdout.contains("le recordamos su cita con *Dra. Gómez* el *jueves 26 de noviembre* a las *3:30 p. m.*."),
        "{stdout}"
    );
    assert!(
        stdout.contains("Responda 1 para confirmar o 2 para cancelar."),
        "{stdout}"
    );
    assert!(stdout.contains("token               ***"), "{stdout}");
    assert!(stdout.contains("id_template         990"), "{stdout}");
    assert!(
        stdout.contains("mobile              573102334455  (the appointment's mobile)"),
        "{stdout}"
    );
    assert!(stdout.contains("template_variables  [Carlos"), "{stdout}");
    assert!(stdout.contains("custom_field        cita-123"), "{stdout}");

    let (code, stdout, _) = recuerda(&[
        "preview",
        "confirma",
        "--appointment",
        path,
        "--reply",
        "sí",
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("is handled by this rule") && stdout.contains("quedó confirmada"),
        "{stdout}"
    );

    let (code, _, stderr) = recuerda(&["preview", "confirma", "--appointment", path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--reply"), "{stderr}");
    let (code, _, stderr) = recuerda(&["preview", "recordatorio-dia-ante", "--appointment", path]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("did you mean `recordatorio-dia-antes`?"),
        "{stderr}"
    );
}

#[test]
fn the_reply_index_routes_exactly_as_trying_each_rule_in_order() {
    let set = shipped();
    assert!(set.reply_index.is_indexed());
    let texts = [
        "1", " Sí ", "si claro", "2", "NO", "no puedo", "3", "10", "hola?", "", "BAJA", "5",
        "confirmo", "1 2",
    ];
    let fields = [
        None,
        Some("cita-7"),
        Some("encuesta-7"),
        Some("otra-cosa"),
        Some(""),
    ];
    let states = [
        None,
        Some("esperando_confirmacion"),
        Some("confirmada"),
        Some("otro"),
    ];
    let mut compared = 0;
    for text in texts {
        for cf in fields {
            for state in states {
                let linear = set
                    .reply_rules()
                    .find(|(_, t)| t.matches(cf, text, state))
                    .map(|(r, _)| r.name.clone());
                let indexed = set.match_reply(cf, text, state).map(|r| r.name.clone());
                assert_eq!(
                    indexed, linear,
                    "text {text:?}, custom_field {cf:?}, state {state:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, texts.len() * fields.len() * states.len());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// The prefix index (anchored keyword patterns), the `RegexSet` for the rest and the
    /// non-ASCII fallback together route exactly as trying each rule in order.
    #[test]
    fn the_prefix_index_routes_like_the_linear_scan(
        picks in proptest::collection::vec((0usize..PATTERNS.len(), 0usize..3), 1..24),
        texts in proptest::collection::vec((0usize..WORDS.len(), 0usize..WORDS.len(), 0usize..3), 1..24),
    ) {
        let mut yaml = String::from("rules:\n");
        for (i, (p, cf)) in picks.iter().enumerate() {
            let cf = ["", "custom_field: \"cita-*\", ", "custom_field: \"encuesta-*\", "][*cf];
            yaml.push_str(&format!(
                "  - name: r{i}\n    trigger:\n      reply: {{{cf}text: {:?}}}\n    actions:\n      - set_state: s{i}\n",
                PATTERNS[*p]
            ));
        }
        let set = recuerda::bench::fixtures::rule_set(&yaml).unwrap();
        proptest::prop_assert!(set.reply_index.is_indexed());
        for (a, b, cf) in texts {
            let text = match cf { 0 => WORDS[a].to_string(), _ => format!("{} {}", WORDS[a], WORDS[b]) };
            let cf = [None, Some("cita-1"), Some("encuesta-1")][cf];
            let linear = set.reply_rules().find(|(_, t)| t.matches(cf, &text, None)).map(|(r, _)| r.name.clone());
            let indexed = set.match_reply(cf, &text, None).map(|r| r.name.clone());
            proptest::prop_assert_eq!(indexed, linear, "text {:?}, custom_field {:?}\n{}", text, cf, yaml);
        }
    }
}

/// Reply patterns of every kind the index sorts: anchored keywords (short, long, sharing a
/// prefix, upper case), classes, non-ASCII literals, unanchored, line-anchored, optional.
const PATTERNS: &[&str] = &[
    r"^(1|si|confirmo)\b",
    r"^(2|no|cancelo)\b",
    r"^sin\b",
    r"^SI$",
    r"^reprogramacion",
    r"^reprogramar\b",
    r"^[1-5]$",
    r"^(sí|claro)",
    r"baja",
    r"(?m)^ayuda",
    r"^\s*3",
    r"^(ok)?$",
    r"^kelvin",
];

const WORDS: &[&str] = &[
    "1",
    "2",
    "3",
    "10",
    "si",
    "SI",
    "Sí",
    "sin",
    "no",
    "NO",
    "confirmo",
    "Cancelo",
    "reprogramacion",
    "reprogramar",
    "reprogramaciones",
    "claro",
    "BAJA",
    "ayuda",
    "ok",
    "",
    "hola",
    "\u{212A}elvin",
    "kelvin",
    "5",
    "6",
];
