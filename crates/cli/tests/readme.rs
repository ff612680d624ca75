//! The README's command blocks, pasted as a new user would: every `sh` block of the Quickstart
//! and of the sections after it, up to "What is where", runs as written in `bash` against a
//! fresh server (the key is the one its first start printed), and every answer is checked.
//!
//! The only edits are the ones the README asks the reader to make: the pasted key, the
//! reservation id "of the answer above", and the server's address. A placeholder (`...`) the
//! test does not know how to fill fails the test, so a new README example cannot go untested.
//! Needs `bash` and `curl` on `PATH`; without curl the test says it was skipped, unless
//! `TOLLGATE_TEST_REQUIRE_CURL=1` (CI sets it) makes that a failure.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// The sections whose blocks run, in README order: from this heading up to the next one not
/// listed.
const SECTIONS: &[&str] = &[
    "## Quickstart",
    "## Retries, long jobs and big numbers",
    "## Plan changes, cancels, time zones, anonymous users and accounts",
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(section, block)` of every `sh` block in the sections above.
fn blocks(readme: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(code) = &mut block {
            if line.trim_start().starts_with("```") {
                if let Some(s) = &section {
                    out.push((s.clone(), block.take().unwrap_or_default()));
                }
                block = None;
            } else {
                code.push_str(line);
                code.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            section = SECTIONS.contains(&line).then(|| line.to_string());
        } else if line.trim_start() == "```sh" {
            block = Some(String::new());
        }
    }
    out
}

/// The reader's edits: the key they pasted, the reservation id of the answer above.
fn fill_in(block: &str, key: &str, reservation: Option<&str>) -> String {
    let mut filled = block.replace("tg_sk_test_...", key);
    if filled.contains("rsv_...") {
        let id = reservation.expect("a block asks for the reservation id of an answer above");
        filled = filled.replace("rsv_...", id);
    }
    let left: Vec<&str> = filled.lines().filter(|l| l.contains("...")).collect();
    assert!(
        left.is_empty(),
        "README placeholders this test cannot fill in: {left:?}"
    );
    filled
}

/// Every JSON object a block printed, in order (curl prints them back to back; the CLI's
/// lines of text between them are skipped).
fn answers(stdout: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut rest = stdout;
    while let Some(start) = rest.find('{') {
        let mut stream = serde_json::Deserializer::from_str(&rest[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                out.push(v);
                rest = &rest[start + stream.byte_offset()..];
            }
            _ => rest = &rest[start + 1..],
        }
    }
    out
}

fn curl_available() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_commands_work_as_written() {
    if !curl_available() {
        assert!(
            std::env::var("TOLLGATE_TEST_REQUIRE_CURL").is_err(),
            "curl is required here (TOLLGATE_TEST_REQUIRE_CURL is set)"
        );
        eprintln!("skipped: curl is not installed");
        return;
    }
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 10,
        "the README's command blocks: {blocks:?}"
    );

    // `cargo run --release --bin tollgate -- serve` on an empty data dir; the key is the one
    // it printed. The README's `./target/release/tollgate` and `examples/` are this build's.
    let server = TestServer::builder().first_start().start().await;
    let key = server.keys.test_secret.clone();
    assert!(key.starts_with("tg_sk_test_"), "the README says so: {key}");
    let cwd = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(cwd.path().join("target/release")).expect("mkdir");
    std::os::unix::fs::symlink(BIN, cwd.path().join("target/release/tollgate")).expect("link");
    std::os::unix::fs::symlink(repository().join("examples"), cwd.path().join("examples"))
        .expect("link");

    let mut reservation: Option<String> = None;
    let mut checked = 0;
    for (i, (section, block)) in blocks.iter().enumerate() {
        let script = fill_in(block, &key, reservation.as_deref());
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(cwd.path())
            // What the export block sets, for the blocks after it (each runs in its own shell).
            .env("TOLLGATE_URL", &server.base_url)
            .env("TOLLGATE_KEY", &key)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let what = format!(
            "block {i} of {section}:\n{script}\nprinted:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{what}");
        let answers = answers(&stdout);
        for a in &answers {
            assert!(a.get("error").is_none(), "an error answer: {what}");
        }
        if let Some(id) = answers
            .iter()
            .rev()
            .find_map(|a| a["reservationId"].as_str())
        {
            reservation = Some(id.to_string());
        }
        check(i, &script, &answers, &stdout, &what);
        checked += 1;
    }
    assert_eq!(checked, blocks.len());
}

/// What each block must answer, told apart by what it runs.
fn check(i: usize, script: &str, answers: &[Value], stdout: &str, what: &str) {
    let runs = |s: &str| script.contains(s);
    if runs("export TOLLGATE_URL") {
        assert!(
            runs("export TOLLGATE_KEY="),
            "the CLI reads TOLLGATE_KEY: {what}"
        );
        assert!(stdout.is_empty(), "{what}");
    } else if runs("PUT $TOLLGATE_URL/v1/plans") {
        let doc = &answers[0];
        assert!(int(doc, "version") >= 1, "{what}");
        let plans: Vec<&str> = doc["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(plans, ["free", "pro"], "{what}");
    } else if runs("tollgate plans apply examples/plans.toml") {
        assert!(stdout.contains("3 plans"), "{what}");
        let account = answers
            .iter()
            .find(|a| a.get("members").is_some())
            .expect(what);
        assert_eq!(account["planId"], "team", "{what}");
        assert_eq!(account["seats"], json!({"used": 1, "max": 3}), "{what}");
        let member = answers
            .iter()
            .find(|a| a.get("addedAt").is_some())
            .expect(what);
        assert_eq!(
            (member["accountId"].as_str(), member["userId"].as_str()),
            (Some("acme"), Some("u_7")),
            "{what}"
        );
    } else if runs("v1/subscriptions/cancel") {
        assert_eq!(answers.len(), 3, "{what}");
        assert!(
            answers[0]["endsAt"].is_string(),
            "cancel at period end: {what}"
        );
        let kinds: Vec<&str> = answers[1]["history"]
            .as_array()
            .expect(what)
            .iter()
            .map(|h| h["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["created", "cancel_scheduled"], "{what}");
        assert_eq!(answers[2]["timezone"], "Asia/Tokyo", "{what}");
    } else if runs("/v1/subscriptions") {
        assert_eq!(
            (answers[0]["userId"].as_str(), answers[0]["planId"].as_str()),
            (Some("u_42"), Some("pro")),
            "{what}"
        );
    } else if runs("Idempotency-Key") {
        assert_eq!(answers[0]["allowed"], true, "{what}");
    } else if runs("/v1/reserve") {
        assert_eq!(answers[0]["allowed"], true, "{what}");
        assert_eq!(
            limit(&answers[0], "premium_images")["reserved"],
            1,
            "{what}"
        );
    } else if runs("ifExpired") {
        assert_eq!(
            (answers[0]["status"].as_str(), answers[0]["late"].as_bool()),
            (Some("committed"), Some(true)),
            "{what}"
        );
    } else if runs("/commit") {
        assert_eq!(answers[0]["status"], "committed", "{what}");
        assert_eq!(answers[0]["late"], false, "{what}");
    } else if runs("/usage") {
        let u = &answers[0];
        assert_eq!(
            (u["userId"].as_str(), u["planId"].as_str()),
            (Some("u_42"), Some("pro")),
            "{what}"
        );
        assert_counts(limit(u, "images_monthly"), 500, 1, 0);
        assert_counts(limit(u, "premium_images"), 50, 1, 0);
    } else if runs("tollgate usage u_42") {
        assert!(stdout.contains("User u_42 on plan pro"), "{what}");
        assert!(stdout.contains("premium_images"), "{what}");
    } else if runs("/v1/identify") {
        assert_eq!(answers[0]["userId"], "u_42", "{what}");
        assert_eq!(answers[0]["merged"], true, "{what}");
    } else {
        panic!("block {i} is not checked by this test; add what it must answer: {what}");
    }
}
