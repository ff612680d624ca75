//! `tollgate plans apply|export`: plan documents as files, in JSON or TOML.
//!
//! The server speaks JSON only; a TOML file is converted to the same JSON document before it is
//! sent, and an export can be written back as TOML. The server checks the document; this
//! command only converts it.

use crate::remote::Remote;
use crate::PlansCommand;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use reqwest::Method;
use serde_json::Value;
use std::path::Path;

/// Largest plan file read, in bytes: the server's own plan document limit.
const PLAN_FILE_BYTES_MAX: u64 = tollgate_core::plan::PLAN_DOCUMENT_BYTES_MAX as u64;

/// An environment of the key's project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Env {
    Test,
    Live,
}

impl Env {
    fn as_str(self) -> &'static str {
        match self {
            Env::Test => "test",
            Env::Live => "live",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Toml,
}

pub async fn run(command: PlansCommand) -> Result<()> {
    match command {
        PlansCommand::Apply { file, remote, json } => {
            let document = read_document(&file)?;
            let remote = Remote::with_key(&remote)?;
            let stored = remote
                .call(Method::PUT, &["v1", "plans"], &[], Some(&document))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
                return Ok(());
            }
            let plans = stored["plans"].as_array().map_or(0, Vec::len);
            let plural = if plans == 1 { "" } else { "s" };
            // The server stores nothing when the document is the newest version already.
            if stored["changed"] == Value::Bool(false) {
                println!(
                    "Unchanged: {} is plan document version {} already ({plans} plan{plural}); \
                     no new version was made.",
                    file.display(),
                    stored["version"],
                );
            } else {
                println!(
                    "Applied {} as plan document version {} ({plans} plan{plural}).",
                    file.display(),
                    stored["version"],
                );
            }
            Ok(())
        }
        PlansCommand::Diff {
            remote,
            from,
            to,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let diff = fetch_diff(&remote, from, to).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&diff)?);
            } else {
                print_diff(&diff);
            }
            Ok(())
        }
        PlansCommand::Promote {
            remote,
            from,
            to,
            yes,
        } => {
            let remote = Remote::with_key(&remote)?;
            let diff = fetch_diff(&remote, from, to).await?;
            print_diff(&diff);
            let changes = diff["changes"].as_array().map_or(0, Vec::len);
            if changes == 0 {
                println!("Nothing to promote.");
                return Ok(());
            }
            if !yes
                && !confirm(&format!(
                    "Promote these {changes} change(s) to {}?",
                    to.as_str()
                ))?
            {
                bail!("not promoted");
            }
            let request = serde_json::json!({
                "from": from.as_str(),
                "to": to.as_str(),
                "expectedFromVersion": diff["from"]["version"],
                "expectedToVersion": diff["to"]["version"],
            });
            let done = remote
                .call(
                    Method::POST,
                    &["v1", "plans", "promote"],
                    &[],
                    Some(&request),
                )
                .await?;
            println!(
                "Promoted {} version {} to {}: now version {}.",
                from.as_str(),
                done["from"]["version"],
                to.as_str(),
                done["to"]["version"]
            );
            Ok(())
        }
        PlansCommand::Export { remote, format } => {
            let remote = Remote::with_key(&remote)?;
            let mut document = remote
                .call(Method::GET, &["v1", "plans"], &[], None)
                .await?;
            if let Some(obj) = document.as_object_mut() {
                obj.remove("version");
            }
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&document)?),
                Format::Toml => print!("{}", json_to_toml(&document)?),
            }
            Ok(())
        }
    }
}

async fn fetch_diff(remote: &Remote, from: Env, to: Env) -> Result<Value> {
    remote
        .call(
            Method::GET,
            &["v1", "plans", "diff"],
            &[("from", from.as_str()), ("to", to.as_str())],
            None,
        )
        .await
}

/// One line per change: `~ path: from -> to`, `+ path: value`, `- path`.
fn print_diff(diff: &Value) {
    let env = |side: &str| {
        format!(
            "{} (version {})",
            diff[side]["environment"].as_str().unwrap_or("?"),
            diff[side]["version"]
        )
    };
    println!("Plans of {} against {}:", env("from"), env("to"));
    let changes = diff["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("  no changes");
    }
    for c in changes {
        let path = c["path"].as_str().unwrap_or("?");
        match c["change"].as_str() {
            Some("added") => println!("  + {path}: {}", c["to"]),
            Some("removed") => println!("  - {path}: {}", c["from"]),
            _ => println!("  ~ {path}: {} -> {}", c["from"], c["to"]),
        }
    }
}

/// Asks on the terminal; without one, refuses (scripts pass `--yes`).
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("{question} No terminal to ask on; pass --yes to promote without asking");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Reads a `.json` or `.toml` plan document as JSON.
fn read_document(path: &Path) -> Result<Value> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > PLAN_FILE_BYTES_MAX {
        bail!(
            "{} is over {PLAN_FILE_BYTES_MAX} bytes, the largest plan document",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Some("toml") => {
            toml_to_json(&text).with_context(|| format!("{} is not valid TOML", path.display()))
        }
        _ => bail!(
            "{}: name the file .json or .toml so its format is known",
            path.display()
        ),
    }
}

/// TOML text → the same document as JSON (dates and times become RFC 3339 strings).
pub fn toml_to_json(text: &str) -> Result<Value> {
    let value: toml::Value = toml::from_str(text)?;
    Ok(toml_value_to_json(value))
}

fn toml_value_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.into_iter().map(toml_value_to_json).collect())
        }
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_value_to_json(v)))
                .collect(),
        ),
    }
}

/// A JSON document as TOML text. TOML has no null: null fields are left out, which reads back
/// as the same document (every nullable field of a plan document is optional).
pub fn json_to_toml(value: &Value) -> Result<String> {
    let Some(table) = json_to_toml_value(value).and_then(|v| match v {
        toml::Value::Table(t) => Some(t),
        _ => None,
    }) else {
        bail!("the plan document is not a JSON object");
    };
    Ok(toml::to_string(&table)?)
}

fn json_to_toml_value(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => {
            toml::Value::Array(items.iter().filter_map(json_to_toml_value).collect())
        }
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml_value(v)?)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn toml_and_json_round_trip() {
        let doc = json!({
            "defaultPlan": "free",
            "unmatchedEvents": "deny",
            "plans": [{
                "id": "free", "public": true, "features": ["10 images a day"],
                "billing": {"interval": "month", "intervalCount": 1},
                "limits": [{
                    "id": "images_daily", "quota": 10, "label": "Images per day",
                    "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
                    "match": [{"event": "image.*", "metadata": {"model": ["a", "b"]}}],
                    "notify": [80, 100]
                }]
            }],
            "creditPacks": [],
            "costs": []
        });
        let text = json_to_toml(&doc).unwrap();
        assert_eq!(toml_to_json(&text).unwrap(), doc, "{text}");
    }

    #[test]
    fn nulls_are_left_out_of_toml() {
        let text = json_to_toml(&json!({"a": null, "b": 1})).unwrap();
        assert_eq!(toml_to_json(&text).unwrap(), json!({"b": 1}));
    }
}
