//! `recuerda demo`, as a newcomer runs it (shortened): every step of the loop happens and the
//! process exits 0.

use std::process::Command;

#[test]
fn demo_runs_the_whole_loop_and_summarizes() {
    let out = Command::new(env!("CARGO_BIN_EXE_recuerda"))
        .args(["demo", "--duration", "8s", "--speed", "3000"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("recuerda runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("rule "))
        .unwrap_or_else(|| panic!("no summary table:\n{stdout}"))
        .split_whitespace()
        .collect();
    let totals: Vec<u64> = stdout
        .lines()
        .find(|l| l.starts_with("total "))
        .unwrap_or_else(|| panic!("no totals:\n{stdout}"))
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let total = |column: &str| totals[header.iter().position(|h| *h == column).unwrap() - 1];
    for column in [
        "sent",
        "delivered",
        "read",
        "replied",
        "confirmed",
        "cancelled",
        "failed",
    ] {
        assert!(total(column) > 0, "no `{column}` in the demo:\n{stdout}");
    }
    assert!(stdout.contains("opted out: 1 "), "{stdout}");
    assert!(
        stdout.contains("→ sent"),
        "live lines are printed:\n{stdout}"
    );
    // The demo's logs show no secret and no full mobile.
    assert!(!stderr.contains("demo-token-not-a-secret"), "{stderr}");
    assert!(
        !stdout.contains("573005550101"),
        "mobiles are masked:\n{stdout}"
    );
}
