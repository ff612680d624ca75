//! Names the build in `tollgate --version`: `0.1.0 (commit abcdef123456, built 2026-12-02)`.
//!
//! A bug report then says which commit a binary came from, and a container image built from a
//! tarball (no `.git`) still says when it was built. The commit is `TOLLGATE_COMMIT` when set
//! (a packager that builds outside the repository), else `git rev-parse --short=12 HEAD` of the
//! repository that tracks this crate, else `unknown`. The date is the UTC day of
//! `SOURCE_DATE_EPOCH` when set (reproducible builds,
//! <https://reproducible-builds.org/specs/source-date-epoch/>), else of the moment this script
//! runs. It runs again when HEAD moves, not when a source file changes, so an edit does not
//! rebuild the crate for a new date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Digits of the abbreviated commit id, as `git rev-parse --short=12` prints it (more when 12
/// would be ambiguous).
const COMMIT_DIGITS: usize = 12;

fn main() {
    println!("cargo:rerun-if-env-changed=TOLLGATE_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Without any rerun-if-changed line Cargo reruns the script on every change in the package;
    // with only the env lines, a new commit would not rerun it. The git files `commit` adds are
    // the ones a commit, a checkout or a reset writes; build.rs is listed for when there is no
    // git.
    println!("cargo:rerun-if-changed=build.rs");

    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("Cargo sets it"));
    let commit = commit(&manifest_dir);
    let (year, month, day) = civil_from_days(build_epoch_seconds().div_euclid(86_400));
    let version = std::env::var("CARGO_PKG_VERSION").expect("Cargo sets it");
    println!(
        "cargo:rustc-env=TOLLGATE_VERSION={version} (commit {commit}, built \
         {year:04}-{month:02}-{day:02})"
    );
}

/// `TOLLGATE_COMMIT`, else the abbreviated id of HEAD (asking Cargo to run this script again
/// when HEAD moves), else `unknown`.
fn commit(manifest_dir: &Path) -> String {
    if let Some(commit) = non_empty_env("TOLLGATE_COMMIT") {
        return commit;
    }
    // Only a repository that tracks this crate names its commit: sources unpacked inside another
    // one (a vendored copy, a home directory under git) are not from its HEAD.
    if git(manifest_dir, &["ls-files", "--error-unmatch", "Cargo.toml"]).is_none() {
        return "unknown".to_owned();
    }
    for path in git_files_naming_head(manifest_dir) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let is_commit_id =
        |id: &String| id.len() >= COMMIT_DIGITS && id.chars().all(|c| c.is_ascii_hexdigit());
    git(manifest_dir, &["rev-parse", "--short=12", "HEAD"])
        .filter(is_commit_id)
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The variable's value, trimmed, when it is set to something other than blanks. A value with a
/// control character (a newline would end the `cargo:` line) is refused loudly.
fn non_empty_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    if value.chars().any(char::is_control) {
        panic!("{name} holds a control character: {value:?}");
    }
    (!value.is_empty()).then(|| value.to_owned())
}

/// Seconds since 1970 that name the build: `SOURCE_DATE_EPOCH`, else now.
fn build_epoch_seconds() -> i64 {
    if let Some(value) = non_empty_env("SOURCE_DATE_EPOCH") {
        return value
            .parse()
            .unwrap_or_else(|_| panic!("SOURCE_DATE_EPOCH is not a number of seconds: {value:?}"));
    }
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds since 1970 fit in an i64")
}

/// The files whose change means HEAD names another commit: HEAD itself (a checkout), the loose
/// ref it points to (a commit on the branch), `packed-refs` (where `git gc` moves that ref) and
/// HEAD's reflog (written by every move of HEAD, also when the ref is only in `packed-refs`).
/// `--git-path` resolves them in a worktree too, where HEAD lives in `.git/worktrees/NAME/` and
/// the refs in the main repository's `.git/`. Only files that exist are listed: Cargo reruns a
/// script on every build while a listed file is missing.
fn git_files_naming_head(dir: &Path) -> Vec<PathBuf> {
    let mut names = vec![
        "HEAD".to_owned(),
        "packed-refs".to_owned(),
        "logs/HEAD".to_owned(),
    ];
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(reference);
    }
    names
        .iter()
        .filter_map(|name| git(dir, &["rev-parse", "--git-path", name]))
        .map(|path| dir.join(path))
        .filter(|path| path.is_file())
        .collect()
}

/// The trimmed standard output of `git ARGS` run in `dir`, or `None` when git is missing, `dir`
/// is not in a repository, or the command fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, by Howard
/// Hinnant's `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>): eras of
/// 400 years (146,097 days) starting on March 1st, so that February's leap day ends a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // Days from 0000-03-01 to 1970-01-01.
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11], 0 is March.
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).expect("month is 1 to 12"),
        u32::try_from(day).expect("day is 1 to 31"),
    )
}
