//! The commands that talk to a running server over its HTTP API: the client they share, and
//! `keys` and `usage` (`credits` has its own module). An API error prints its code and message
//! and fails the command.

use crate::table::Table;
use crate::{AdminArgs, Environment, KeyKind, KeysCommand, RemoteArgs, UsageArgs};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, Url};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_api::{CreatedKey, ErrorBody, KeyList, UsageResponse};

pub const URL_DEFAULT: &str = "http://127.0.0.1:7070";
/// Longest the CLI waits for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A server and the bearer token to call it with.
pub struct Remote {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Remote {
    fn new(url: &str, token: Option<String>, what: &str) -> Result<Self> {
        let token = token.ok_or_else(|| anyhow!("no {what}"))?;
        let base = Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
        if base.cannot_be_a_base() {
            bail!("invalid --url {url:?}: use http://HOST:PORT");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base, token })
    }

    /// With a project key (`--key` / `TOLLGATE_KEY`).
    pub fn with_key(args: &RemoteArgs) -> Result<Self> {
        Self::new(
            &args.url,
            args.key.clone(),
            "API key: pass --key or set TOLLGATE_KEY",
        )
    }

    /// With the admin token (`--admin-token` / `TOLLGATE_ADMIN_TOKEN`).
    pub fn with_admin(args: &AdminArgs) -> Result<Self> {
        Self::new(
            &args.url,
            args.admin_token.clone(),
            "admin token: pass --admin-token or set TOLLGATE_ADMIN_TOKEN",
        )
    }

    /// `segments` are path segments, percent-encoded here (a user id may hold any character).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow!("invalid --url {}", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach Tollgate at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {url}: the answer was cut off"))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .with_context(|| format!("{method} {url}: the answer is not JSON"));
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { error }) => {
                let field = error
                    .field
                    .map(|f| format!(" (field `{f}`)"))
                    .unwrap_or_default();
                bail!("{}: {}{field}", error.code, error.message)
            }
            Err(_) => bail!("{method} {url} answered {status}"),
        }
    }
}

/// Prints an answer as pretty JSON (`--json`).
pub fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create {
            project,
            environment,
            kind,
            name,
            admin,
            json,
        } => {
            let remote = Remote::with_admin(&admin)?;
            let mut body = json!({
                "environment": match environment { Environment::Live => "live", Environment::Test => "test" },
                "kind": match kind { KeyKind::Secret => "secret", KeyKind::Publishable => "publishable" },
            });
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            let answer = remote
                .call(
                    Method::POST,
                    &["admin", "v1", "projects", &project, "keys"],
                    &[],
                    Some(&body),
                )
                .await?;
            if json {
                return print_json(&answer);
            }
            let created: CreatedKey = serde_json::from_value(answer)?;
            println!(
                "Created {} (shown this once; store it now):",
                created.key_id
            );
            println!("  {}", created.key);
            Ok(())
        }
        KeysCommand::List {
            project,
            admin,
            json,
        } => {
            let remote = Remote::with_admin(&admin)?;
            let answer = remote
                .call(
                    Method::GET,
                    &["admin", "v1", "projects", &project, "keys"],
                    &[],
                    None,
                )
                .await?;
            if json {
                return print_json(&answer);
            }
            let list: KeyList = serde_json::from_value(answer)?;
            let mut table = Table::new(&[
                "KEY ID", "ENV", "KIND", "NAME", "PREFIX", "CREATED", "REVOKED",
            ]);
            for k in list.keys {
                table.row(vec![
                    k.key_id,
                    enum_name(&k.environment),
                    enum_name(&k.kind),
                    k.name,
                    format!("{}…", k.prefix),
                    k.created_at,
                    k.revoked_at.unwrap_or_else(|| "-".into()),
                ]);
            }
            table.print();
            Ok(())
        }
        KeysCommand::Revoke { key_id, admin } => {
            let remote = Remote::with_admin(&admin)?;
            remote
                .call(Method::DELETE, &["admin", "v1", "keys", &key_id], &[], None)
                .await?;
            println!("Revoked {key_id}.");
            Ok(())
        }
    }
}

/// The wire name of a serde enum value (`live`, `secret`).
pub(crate) fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn usage(args: UsageArgs) -> Result<()> {
    let remote = Remote::with_key(&args.remote)?;
    let query: Vec<(&str, &str)> = args.event.iter().map(|e| ("event", e.as_str())).collect();
    let answer = remote
        .call(
            Method::GET,
            &["v1", "users", &args.user, "usage"],
            &query,
            None,
        )
        .await?;
    if args.json {
        return print_json(&answer);
    }
    let usage: UsageResponse = serde_json::from_value(answer)?;
    let plan = usage
        .plan_id
        .as_deref()
        .unwrap_or("(none: no_subscription)");
    println!("User {} on plan {plan}", usage.user_id);
    if let Some(sub) = &usage.subscription {
        let ends = sub
            .ends_at
            .as_deref()
            .map(|e| format!(", ends {e}"))
            .unwrap_or_default();
        println!(
            "Subscription {} ({}), period {} – {}{ends}",
            sub.subscription_id,
            enum_name(&sub.status),
            sub.current_period.start,
            sub.current_period.end.as_deref().unwrap_or("-"),
        );
    }
    if usage.limits.is_empty() {
        println!("No limits.");
    } else {
        println!();
        limits_table(usage.limits).print();
    }
    if !usage.credits.is_empty() {
        let mut table = Table::new(&["CREDITS PACK", "ITEM", "UNIT", "AVAILABLE", "HELD"]);
        for c in usage.credits {
            table.row(vec![
                c.pack_id.unwrap_or_else(|| "(rollover)".into()),
                c.item_id,
                c.unit,
                c.available.to_string(),
                c.held.to_string(),
            ]);
        }
        println!();
        table.print();
    }
    Ok(())
}

fn limits_table(limits: Vec<tollgate_api::LimitState>) -> Table {
    let mut table = Table::new(&[
        "LIMIT",
        "USED",
        "RESERVED",
        "QUOTA",
        "REMAINING",
        "UNIT",
        "RESETS AT",
    ]);
    for l in limits {
        table.row(vec![
            l.limit_id,
            l.used.to_string(),
            l.reserved.to_string(),
            l.quota.to_string(),
            l.remaining.to_string(),
            l.unit,
            l.resets_at.unwrap_or_else(|| "never".into()),
        ]);
    }
    table
}

/// `POST /admin/v1/token/rotate`: the new admin token.
pub async fn rotate_admin_token(admin: &AdminArgs) -> Result<String> {
    let answer = Remote::with_admin(admin)?
        .call(Method::POST, &["admin", "v1", "token", "rotate"], &[], None)
        .await?;
    answer["adminToken"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the answer holds no adminToken: {answer}"))
}
