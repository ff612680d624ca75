//! A short smoke run of `tollgate bench` per scenario: it must finish with its exactness check
//! passing. No speed threshold: the machine is shared and noisy.
//!
//! The runs go to a suite server, so with `TOLLGATE_TEST_BACKEND=postgres` they check the
//! exactness on PostgreSQL too. The Redis runs start their own redis-server; without one on
//! PATH they are skipped, unless `TOLLGATE_TEST_REQUIRE_REDIS=1` (CI sets it) makes that a
//! failure.

mod common;

use common::TestServer;
use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    common::run_tollgate(&all)
}

/// `bench` against `server` with its test secret key.
fn bench_against(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        "--url",
        server.base_url.as_str(),
        "--key",
        server.keys.test_secret.as_str(),
    ];
    all.extend_from_slice(args);
    bench(&all)
}

/// Whether the Redis runs can go ahead; panics when CI requires them and Redis is missing.
fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("TOLLGATE_TEST_REQUIRE_REDIS").as_deref() != Ok("1"),
            "TOLLGATE_TEST_REQUIRE_REDIS=1 but redis-server is not on PATH"
        );
        eprintln!("skipped: redis-server is not on PATH");
    }
    found
}

const SCENARIOS: [&str; 5] = ["reserve-commit", "hot-user", "track", "check", "mixed"];
/// A small, skewed load over several limits: every scenario's smoke run uses it.
const SMALL_LOAD: [&str; 8] = [
    "--concurrency",
    "8",
    "--users",
    "200",
    "--skew",
    "zipf",
    "--limits",
    "3",
];

#[tokio::test]
async fn every_scenario_ends_exact() {
    let server = TestServer::start().await;
    for scenario in SCENARIOS {
        let mut args = vec!["--scenario", scenario, "--duration-seconds", "2"];
        args.extend(SMALL_LOAD);
        let (ok, stdout, stderr) = bench_against(&server, &args);
        assert!(ok, "{scenario} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("exactness: ok"), "{scenario}:\n{stdout}");
        assert!(
            stdout.contains("P99.9 MS"),
            "{scenario}: no latency table:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn the_credits_scenario_pays_every_commit_with_credits() {
    let server = TestServer::start().await;
    let mut args = vec!["--scenario", "credits", "--duration-seconds", "1"];
    args.extend(SMALL_LOAD);
    let (ok, stdout, stderr) = bench_against(&server, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("exactness: ok") && stdout.contains("credits consumed == acknowledged"),
        "{stdout}"
    );
    assert!(stdout.contains("denied 0"), "{stdout}");
    assert!(
        stderr.contains("granting credits to 200 user(s)"),
        "{stderr}"
    );

    // The Redis reference has no credits.
    let (ok, _, stderr) = bench(&["--target", "redis", "--scenario", "credits"]);
    assert!(!ok);
    assert!(stderr.contains("against Tollgate only"), "{stderr}");
}

#[tokio::test]
async fn the_hot_user_is_admitted_exactly_its_quota() {
    let server = TestServer::start().await;
    let (ok, stdout, stderr) = bench_against(
        &server,
        &[
            "--scenario",
            "hot-user",
            "--duration-seconds",
            "2",
            "--concurrency",
            "32",
            "--quota",
            "50",
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("admitted 50,"), "{stdout}");
}

#[test]
fn a_run_paced_at_a_rate_stays_near_it() {
    // The bench's own server (SQLite, temp dir): 100 iterations a second for 2 s.
    let (ok, stdout, stderr) = bench(&[
        "--rate",
        "100",
        "--duration-seconds",
        "2",
        "--concurrency",
        "4",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("paced at 100/s"), "{stdout}");
    let commits: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("commit"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no commit row:\n{stdout}"));
    // 200 are due; a paced client never runs ahead of its schedule.
    assert!(
        commits <= 200,
        "{commits} commits in 2 s at 100/s:\n{stdout}"
    );
}

#[test]
fn a_live_key_is_refused() {
    for key in ["tg_sk_live_x", "sk_live_x", "tg_pk_test_x"] {
        let (ok, _, stderr) = bench(&["--url", "http://127.0.0.1:9", "--key", key]);
        assert!(!ok);
        assert!(stderr.contains("never a live one"), "{key}: {stderr}");
    }
}

#[test]
fn a_test_secret_key_of_either_form_is_taken() {
    // Nothing listens on port 9: the bench gets past the key check and fails to connect.
    for key in ["tg_sk_test_x", "sk_test_x"] {
        let (ok, _, stderr) = bench(&["--url", "http://127.0.0.1:9", "--key", key]);
        assert!(!ok);
        assert!(!stderr.contains("never a live one"), "{key}: {stderr}");
        assert!(
            stderr.contains("applying the bench plan document"),
            "{key}: {stderr}"
        );
    }
}

#[test]
fn the_redis_reference_ends_exact_in_every_scenario() {
    if !redis_available() {
        return;
    }
    for scenario in SCENARIOS {
        let mut args = vec![
            "--target",
            "redis",
            "--redis-persistence",
            "none",
            "--scenario",
            scenario,
            "--duration-seconds",
            "1",
            "--quota",
            "50",
        ];
        args.extend(SMALL_LOAD);
        let (ok, stdout, stderr) = bench(&args);
        assert!(ok, "redis {scenario} failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("exactness: ok"),
            "redis {scenario}:\n{stdout}"
        );
        if scenario == "hot-user" {
            assert!(stdout.contains("admitted 50,"), "{stdout}");
        }
    }
}

#[test]
fn compare_redis_prints_the_ratios() {
    if !redis_available() {
        return;
    }
    let (ok, stdout, stderr) = bench(&[
        "--compare-redis",
        "--duration-seconds",
        "1",
        "--concurrency",
        "4",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("exactness: ok").count(), 3, "{stdout}");
    for label in [
        "tollgate (sqlite, own server)",
        "redis lua, durable (appendfsync always)",
        "redis lua, no persistence",
    ] {
        let row = stdout
            .lines()
            .skip_while(|l| !l.starts_with("comparison"))
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no comparison row for {label}:\n{stdout}"));
        assert!(row.ends_with('x'), "{row}");
    }
}
