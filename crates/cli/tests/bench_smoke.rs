//! A short smoke run of `tollgate bench` per scenario: it must finish with its exactness check
//! passing. No speed threshold: the machine is shared and noisy.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("bench")
        .args(args)
        .env_remove("TOLLGATE_URL")
        .env_remove("TOLLGATE_KEY")
        .output()
        .expect("run tollgate bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_scenario_ends_exact() {
    for scenario in ["reserve-commit", "hot-user", "track", "check", "mixed"] {
        let (ok, stdout, stderr) = bench(&[
            "--scenario",
            scenario,
            "--duration-seconds",
            "2",
            "--concurrency",
            "8",
            "--users",
            "200",
            "--skew",
            "zipf",
            "--limits",
            "3",
        ]);
        assert!(ok, "{scenario} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("exactness: ok"), "{scenario}:\n{stdout}");
        assert!(
            stdout.contains("P99.9 MS"),
            "{scenario}: no latency table:\n{stdout}"
        );
    }
}

#[test]
fn the_hot_user_is_admitted_exactly_its_quota() {
    let (ok, stdout, stderr) = bench(&[
        "--scenario",
        "hot-user",
        "--duration-seconds",
        "2",
        "--concurrency",
        "32",
        "--quota",
        "50",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("admitted 50,"), "{stdout}");
}

#[test]
fn a_live_key_is_refused() {
    let (ok, _, stderr) = bench(&["--url", "http://127.0.0.1:9", "--key", "sk_live_x"]);
    assert!(!ok);
    assert!(stderr.contains("never a live one"), "{stderr}");
}
