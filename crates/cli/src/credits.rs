//! `tollgate credits grant|show|ledger|revoke`: a user's or an account's credits through the
//! HTTP API (API.md §8). The server checks every value; this command only builds the request
//! and prints the answer for a person (or as JSON with `--json`).

use crate::remote::{print_json, Remote};
use crate::table::Table;
use crate::RemoteArgs;
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_api::{
    CreditGrant, CreditsResponse, GrantResponse, LedgerEntry, LedgerEntryType, LedgerResponse,
    RevokeResponse,
};

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Grant packs of credits to a user or an account
    Grant(GrantArgs),
    /// Show the unexpired grants and the balance per pack item
    Show {
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Show the credit ledger, newest first, one line per entry
    Ledger {
        #[command(flatten)]
        owner: OwnerArgs,
        /// Entries to show, 1 to 1000
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this position (printed after a full page)
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Remove what is left of a grant, or of every grant of an external reference
    Revoke {
        #[command(flatten)]
        target: RevokeTarget,
        /// Why, shown in the ledger (at most 500 bytes)
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
}

/// Whose credits: a user or an account.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct OwnerArgs {
    /// The app's user id
    #[arg(long, value_name = "USER_ID")]
    user: Option<String>,
    /// An account id (its members spend its credits)
    #[arg(long, value_name = "ACCOUNT_ID")]
    account: Option<String>,
}

impl OwnerArgs {
    /// The path of the owner (`users/U` or `accounts/A`) and its name for people.
    fn path(&self) -> (&'static str, &str) {
        match (&self.user, &self.account) {
            (Some(user), _) => ("users", user),
            (None, Some(account)) => ("accounts", account),
            // clap requires exactly one of the two.
            (None, None) => ("users", ""),
        }
    }

    fn describe(&self) -> String {
        match self.path() {
            ("users", id) => format!("user {id}"),
            (_, id) => format!("account {id}"),
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// A grant id (`grt_…`)
    #[arg(long, value_name = "GRANT_ID")]
    grant: Option<String>,
    /// Every grant made with this external reference
    #[arg(long, value_name = "REF")]
    external_ref: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Source {
    Purchase,
    Grant,
    Refund,
    Manual,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// A pack id of the plan document's creditPacks
    #[arg(long, value_name = "PACK_ID")]
    pack: String,
    /// How many packs, 1 to 10000 [default: 1]
    #[arg(long, value_name = "N")]
    quantity: Option<u64>,
    /// A reference that grants once (a payment id); the same one again grants nothing
    #[arg(long, value_name = "REF")]
    external_ref: Option<String>,
    /// An RFC 3339 time after now, or `never` [default: the pack's expiresAfterDays]
    #[arg(long, value_name = "TIME|never")]
    expires_at: Option<String>,
    /// Why the credits are granted [default: purchase]
    #[arg(long, value_enum)]
    source: Option<Source>,
    /// A note for people (at most 500 bytes)
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the raw JSON answer
    #[arg(long)]
    json: bool,
}

pub async fn run(command: CreditsCommand) -> Result<()> {
    match command {
        CreditsCommand::Grant(args) => grant(args).await,
        CreditsCommand::Show {
            owner,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let (kind, id) = owner.path();
            let answer = remote
                .call(Method::GET, &["v1", kind, id, "credits"], &[], None)
                .await?;
            if json {
                return print_json(&answer);
            }
            let credits: CreditsResponse = serde_json::from_value(answer)?;
            print!("{}", render_credits(&owner.describe(), &credits));
            Ok(())
        }
        CreditsCommand::Ledger {
            owner,
            limit,
            cursor,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let (kind, id) = owner.path();
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let answer = remote
                .call(
                    Method::GET,
                    &["v1", kind, id, "credits", "ledger"],
                    &query,
                    None,
                )
                .await?;
            if json {
                return print_json(&answer);
            }
            let page: LedgerResponse = serde_json::from_value(answer)?;
            if page.entries.is_empty() {
                println!("No ledger entries for {}.", owner.describe());
            }
            for entry in &page.entries {
                println!("{}", ledger_line(entry));
            }
            if let Some(next) = page.next_cursor {
                println!("More: pass --cursor {next}");
            }
            Ok(())
        }
        CreditsCommand::Revoke {
            target,
            reason,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let mut body = match (&target.grant, &target.external_ref) {
                (Some(grant), _) => json!({ "grantId": grant }),
                (None, r) => json!({ "externalRef": r }),
            };
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let answer = remote
                .call(Method::POST, &["v1", "credits", "revoke"], &[], Some(&body))
                .await?;
            if json {
                return print_json(&answer);
            }
            let revoked: RevokeResponse = serde_json::from_value(answer)?;
            for r in revoked.revoked {
                println!("Revoked {} units of {}.", r.quantity, r.grant_id);
            }
            Ok(())
        }
    }
}

async fn grant(args: GrantArgs) -> Result<()> {
    let remote = Remote::with_key(&args.remote)?;
    let mut body = json!({ "packId": args.pack });
    match (&args.owner.user, &args.owner.account) {
        (Some(user), _) => body["userId"] = json!(user),
        (None, account) => body["accountId"] = json!(account),
    }
    if let Some(n) = args.quantity {
        body["quantity"] = json!(n);
    }
    if let Some(r) = &args.external_ref {
        body["externalRef"] = json!(r);
    }
    match args.expires_at.as_deref() {
        None => {}
        Some("never") => body["expiresAt"] = Value::Null,
        Some(at) => body["expiresAt"] = json!(at),
    }
    if let Some(source) = args.source {
        body["source"] = json!(match source {
            Source::Purchase => "purchase",
            Source::Grant => "grant",
            Source::Refund => "refund",
            Source::Manual => "manual",
        });
    }
    if let Some(note) = &args.note {
        body["note"] = json!(note);
    }
    let answer = remote
        .call(Method::POST, &["v1", "credits", "grants"], &[], Some(&body))
        .await?;
    if args.json {
        return print_json(&answer);
    }
    let granted: GrantResponse = serde_json::from_value(answer)?;
    let packs = args.quantity.unwrap_or(1);
    let plural = if packs == 1 { "" } else { "s" };
    if granted.created {
        println!(
            "Granted {packs} pack{plural} of {} to {}.",
            args.pack,
            args.owner.describe()
        );
    } else {
        println!(
            "Already granted with external reference {}: nothing new was granted.",
            args.external_ref.as_deref().unwrap_or("-")
        );
    }
    print!("{}", grants_table(&granted.grants).render());
    Ok(())
}

fn or_dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_string()
}

fn grants_table(grants: &[CreditGrant]) -> Table {
    let mut table = Table::new(&[
        "GRANT",
        "PACK",
        "ITEM",
        "UNIT",
        "AVAILABLE",
        "HELD",
        "GRANTED",
        "PRIORITY",
        "EXPIRES",
        "SOURCE",
        "OWNER",
    ]);
    for g in grants {
        let owner = match (&g.user_id, &g.account_id) {
            (Some(user), _) => format!("user {user}"),
            (None, Some(account)) => format!("account {account}"),
            (None, None) => "-".to_string(),
        };
        table.row(vec![
            g.grant_id.clone(),
            or_dash(g.pack_id.as_deref()),
            g.item_id.clone(),
            g.unit.clone(),
            g.available.to_string(),
            g.held.to_string(),
            g.quantity.to_string(),
            g.priority.to_string(),
            g.expires_at.clone().unwrap_or_else(|| "never".into()),
            crate::remote::enum_name(&g.source),
            owner,
        ]);
    }
    table
}

/// The grants of `credits` and its balance per pack item, as text.
fn render_credits(who: &str, credits: &CreditsResponse) -> String {
    if credits.grants.is_empty() && credits.packs.is_empty() {
        return format!("No credits for {who}.\n");
    }
    let mut packs = Table::new(&["PACK", "ITEM", "UNIT", "AVAILABLE", "HELD"]);
    for p in &credits.packs {
        packs.row(vec![
            p.pack_id.clone().unwrap_or_else(|| "(rollover)".into()),
            p.item_id.clone(),
            p.unit.clone(),
            p.available.to_string(),
            p.held.to_string(),
        ]);
    }
    format!(
        "Credits of {who}\n\n{}\n{}",
        packs.render(),
        grants_table(&credits.grants).render()
    )
}

/// One ledger entry for people: when, what, how much, the balance after it and why. Times
/// are padded to the longest RFC 3339 form the API writes, so the columns line up.
fn ledger_line(e: &LedgerEntry) -> String {
    let change = match e.kind {
        LedgerEntryType::Grant | LedgerEntryType::Refund | LedgerEntryType::Rollover => {
            format!("+{}", e.quantity)
        }
        LedgerEntryType::Hold => format!("held +{}", e.quantity),
        LedgerEntryType::Release => format!("held -{}", e.quantity),
        LedgerEntryType::Burn | LedgerEntryType::Expire | LedgerEntryType::Revoke => {
            format!("-{}", e.quantity)
        }
    };
    let mut refs = Vec::new();
    if let Some(user) = &e.user_id {
        refs.push(format!("user {user}"));
    }
    if let Some(r) = &e.reservation_id {
        refs.push(r.clone());
    }
    if let Some(ev) = &e.event_id {
        refs.push(ev.clone());
    }
    if let Some(x) = &e.external_ref {
        refs.push(format!("ref {x}"));
    }
    let refs = if refs.is_empty() {
        String::new()
    } else {
        format!(" [{}]", refs.join(", "))
    };
    format!(
        "{:<24}  {:<8}  {:>10}  {}  remaining {}, held {}  {}{refs}",
        e.at,
        crate::remote::enum_name(&e.kind),
        change,
        e.grant_id,
        e.remaining_after,
        e.held_after,
        e.reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_entry_reads_as_one_line() {
        let e = LedgerEntry {
            entry_id: "led_1".into(),
            at: "2026-12-01T10:00:00Z".into(),
            kind: LedgerEntryType::Burn,
            grant_id: "grt_1".into(),
            quantity: 2,
            remaining_after: 48,
            held_after: 0,
            reservation_id: Some("rsv_1".into()),
            event_id: Some("evt_1".into()),
            external_ref: None,
            reason: "2 images beyond the plan's quota".into(),
            user_id: Some("u_42".into()),
        };
        assert_eq!(
            ledger_line(&e),
            "2026-12-01T10:00:00Z      burn              -2  grt_1  remaining 48, held 0  \
             2 images beyond the plan's quota [user u_42, rsv_1, evt_1]"
        );
    }

    #[test]
    fn no_credits_says_so() {
        let empty = CreditsResponse {
            user_id: Some("u".into()),
            account_id: None,
            grants: Vec::new(),
            packs: Vec::new(),
        };
        assert_eq!(render_credits("user u", &empty), "No credits for user u.\n");
    }
}
