//! The logs of a full scenario, error paths included, hold no secret and no full mobile.

use super::engine::{sim_config, write_folder, API_TOKEN, LOGIN, RULES, TOKEN};
use recuerda::simulator::{Fault, Simulator};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scenario_logs_no_secret_and_no_full_mobile() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    write_folder(dir.path(), RULES);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = format!("wh{}", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("recuerda.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: data\nrules_dir: rules\ntemplates_dir: templates\n\
             provider:\n  base_url: {}\n  retry_base: 10ms\nwebhook:\n  secret: {secret}\n",
            sim.base_url()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    sim.set_webhook_url(Some(format!("{base}/webhook/{secret}")))
        .unwrap();
    let log_path = dir.path().join("recuerda.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        // Secrets from the environment, as in production; logs at their most verbose.
        .env("RECUERDA_PROVIDER_LOGIN", LOGIN)
        .env("RECUERDA_PROVIDER_TOKEN", TOKEN)
        .env("RECUERDA_API_TOKEN", API_TOKEN)
        .env("RECUERDA_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "engine did not start");
    let mobile = "573001234567";
    let put = |id: &str, m: &str| {
        http.put(format!("{base}/api/v1/appointments/{id}"))
            .bearer_auth(API_TOKEN)
            .json(
                &json!({"mobile": m, "start": "2031-05-05T10:00:00-05:00", "paciente": "Ana Ruiz"}),
            )
            .send()
    };
    assert_eq!(put("L1", mobile).await.unwrap().status(), 201);
    for _ in 0..200 {
        if !sim.sends().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.reply(mobile, "1", "cita-L1").await.unwrap();
    sim.reply(mobile, "BAJA", "cita-L1").await.unwrap();
    // Error paths: wrong webhook path, malformed body, wrong API token, a refused login.
    http.post(format!("{base}/webhook/{}x", &secret[..10]))
        .body("{}")
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/webhook/{secret}"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/api/v1/replies"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    sim.push_fault(Fault::Code { code: 2 });
    put("L2", "573009876543").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGTERM: a graceful stop, exit 0.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    sim.shutdown().await;

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().count() > 10,
        "the scenario was logged:\n{logs}"
    );
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "json lines"
    );
    assert!(
        logs.contains("provider refused the login (code 2)"),
        "the refused login is reported"
    );
    assert!(
        logs.contains("57300****567"),
        "mobiles appear masked:\n{logs}"
    );
    for (what, needle) in [
        ("provider token", TOKEN),
        ("webhook secret", secret.as_str()),
        ("API token", API_TOKEN),
        ("a full mobile", mobile),
        ("a full mobile", "573009876543"),
    ] {
        assert!(
            !logs.contains(needle),
            "the logs hold {what} `{needle}`:\n{logs}"
        );
    }
}
