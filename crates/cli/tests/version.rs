//! `tollgate --version` names the build: `tollgate 0.1.0 (commit abcdef123456, built
//! 2026-12-02)`, from `build.rs`. A bug report quotes this line, so it must say which commit
//! the binary came from.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The parts of a `--version` line.
#[derive(Debug)]
struct Version {
    package: String,
    commit: String,
    date: (u32, u32, u32),
}

/// Parses `tollgate VERSION (commit COMMIT, built YYYY-MM-DD)`, or says what is wrong.
fn parse(line: &str) -> Result<Version, String> {
    let rest = line
        .strip_prefix("tollgate ")
        .ok_or("does not start with `tollgate `")?;
    let (package, rest) = rest.split_once(" (commit ").ok_or("no ` (commit `")?;
    let (commit, rest) = rest.split_once(", built ").ok_or("no `, built `")?;
    let date = rest.strip_suffix(')').ok_or("does not end with `)`")?;
    let date_parts: Vec<&str> = date.split('-').collect();
    let [year, month, day] = date_parts[..] else {
        return Err(format!("the date {date:?} is not YYYY-MM-DD"));
    };
    let number = |text: &str, digits: usize| -> Result<u32, String> {
        if text.len() != digits || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("the date {date:?} is not YYYY-MM-DD"));
        }
        Ok(text.parse().expect("digits"))
    };
    let date = (number(year, 4)?, number(month, 2)?, number(day, 2)?);
    if !(2024..=9999).contains(&date.0)
        || !(1..=12).contains(&date.1)
        || !(1..=31).contains(&date.2)
    {
        return Err(format!("the date {date:?} is not a build date"));
    }
    Ok(Version {
        package: package.to_owned(),
        commit: commit.to_owned(),
        date,
    })
}

/// `git rev-parse --short=12 HEAD` in the test's directory (the crate's), when git is there.
fn git_head() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let head = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !head.is_empty()).then_some(head)
}

#[test]
fn version_names_the_package_the_commit_and_the_build_date() {
    let output = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run tollgate --version");
    assert!(output.status.success(), "exit status {}", output.status);
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let line = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let version = parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));

    assert_eq!(version.package, env!("CARGO_PKG_VERSION"), "{line:?}");
    // A packager's TOLLGATE_COMMIT wins over git, whatever its shape (build.rs); this test is
    // built by the same Cargo run, so it sees the same variable.
    let packager_commit = option_env!("TOLLGATE_COMMIT")
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(commit) = packager_commit {
        assert_eq!(version.commit, commit, "{line:?}");
        return;
    }
    let commit_is_hex =
        version.commit.len() >= 12 && version.commit.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        commit_is_hex || version.commit == "unknown",
        "{line:?}: the commit is neither an id nor `unknown`"
    );
    // Without git (a source tarball) there is nothing to compare with.
    if let Some(head) = git_head() {
        assert_eq!(version.commit, head, "{line:?}: not the checked-out commit");
    }
}

#[test]
fn parse_refuses_lines_of_another_shape() {
    let good = parse("tollgate 0.1.0 (commit 0123456789ab, built 2026-12-02)").expect("parses");
    assert_eq!(good.package, "0.1.0");
    assert_eq!(good.commit, "0123456789ab");
    assert_eq!(good.date, (2026, 12, 2));
    for bad in [
        "tollgate 0.1.0",
        "tollgate-cli 0.1.0 (commit 0123456789ab, built 2026-12-02)",
        "tollgate 0.1.0 (commit 0123456789ab, built 2026-12-2)",
        "tollgate 0.1.0 (commit 0123456789ab, built 2026-13-02)",
        "tollgate 0.1.0 (commit 0123456789ab, built 2026-12-02",
        "tollgate 0.1.0 (commit 0123456789ab)",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} parsed");
    }
}
