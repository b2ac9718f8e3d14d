//! `recuerda bench` smoke test: every scenario runs end to end against the real binary, in a
//! few seconds, without errors, so the benchmark cannot rot. Its figures are not judged here
//! (a debug build on a shared machine); only that work flowed and nothing failed.

use std::time::Duration;

/// `recuerda bench ARGS`, bounded to 2 minutes.
async fn bench(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_recuerda"))
            .arg("bench")
            .args(args)
            .env_remove("RECUERDA_LOG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the bench finishes within 2 minutes")
    .expect("the recuerda binary runs")
}

#[tokio::test]
async fn every_scenario_runs_briefly_without_errors() {
    let output = bench(&[
        "--scenario",
        "all",
        "--duration",
        "100ms",
        "--connections",
        "4",
        "--appointments",
        "300",
        "--provider-concurrency",
        "8",
    ])
    .await;
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    for header in [
        "\n(a) ",
        "\n(b) ",
        "\n(c) ",
        "\n(d) ",
        "\n(e) ",
        "\nsummary",
    ] {
        assert!(out.contains(header), "no `{header}` in:\n{out}");
    }
    // Work flowed: (c) queued and sent every appointment, (b) acknowledged replies.
    assert!(
        out.contains("300 occasions rendered and durably queued"),
        "{out}"
    );
    assert!(out.contains("300 of 300 sent"), "{out}");
    let acked = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("replies acknowledged"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse::<u64>().ok())
        .expect("a `replies acknowledged` line");
    assert!(acked > 0, "{out}");
    let error_checks: Vec<&str> = out.lines().filter(|l| l.contains(") errors ")).collect();
    assert_eq!(error_checks.len(), 3, "{out}");
    for line in error_checks {
        assert!(
            line.trim_end().ends_with(" met"),
            "errors in: {line}\n{out}"
        );
    }
}

#[tokio::test]
async fn repeated_rounds_are_judged_by_their_median() {
    let output = bench(&["--scenario", "e", "--duration", "100ms", "--repeat", "3"]).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("== round 3 of 3"), "{out}");
    assert!(out.contains("median of 3 rounds"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("(e) match cost"))
        .expect("the (e) figure in the summary");
    // The median, then the three rounds' figures in parentheses.
    let rounds = line.rsplit_once('(').map(|(_, r)| r).unwrap_or_default();
    assert_eq!(rounds.matches('×').count(), 3, "{line}");
    let code = bench(&["--repeat", "0"]).await;
    assert!(!code.status.success());
    assert!(String::from_utf8_lossy(&code.stderr).contains("`--repeat` must be at least 1"));
}
