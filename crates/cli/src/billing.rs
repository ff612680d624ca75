//! `tollgate integrations …` and `tollgate webhooks …`: an environment's Stripe and Polar
//! integrations and the biller events they received, through the HTTP API (API.md §10). The
//! server checks every value; these commands build the request and print the answer.

use crate::remote::{print_json, Remote};
use crate::RemoteArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tollgate_api::{BillerEventsResponse, IntegrationResponse, WebhookAnswer};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BillerArg {
    Stripe,
    Polar,
}

impl BillerArg {
    fn name(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Polar => "polar",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum IntegrationsCommand {
    /// Set the integration (replaces its settings; the webhook endpoint stays)
    Set(SetArgs),
    /// Show the integration, secrets masked
    Show {
        biller: BillerArg,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Map a biller customer to a user or an account (events waiting on it apply at once)
    MapCustomer {
        biller: BillerArg,
        /// The biller's customer id (cus_… on Stripe)
        customer_id: String,
        /// The app's user id
        #[arg(
            long,
            value_name = "USER_ID",
            conflicts_with = "account",
            required_unless_present = "account"
        )]
        user: Option<String>,
        /// An account id
        #[arg(long, value_name = "ACCOUNT_ID")]
        account: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    biller: BillerArg,
    /// A webhook signing secret; give it twice during a rotation
    #[arg(long = "secret", value_name = "WHSEC", required = true)]
    secrets: Vec<String>,
    /// A path into the biller object holding the app's user id, tried in order
    /// [default: client_reference_id, metadata.user_id (Stripe); customer.external_id,
    /// metadata.user_id (Polar)]
    #[arg(long = "user-id-from", value_name = "PATH")]
    user_id_from: Vec<String>,
    /// A path holding an account id [default: metadata.account_id]
    #[arg(long = "account-id-from", value_name = "PATH")]
    account_id_from: Vec<String>,
    /// Signature timestamp tolerance in seconds [default: 300]
    #[arg(long, value_name = "SECONDS")]
    tolerance: Option<u32>,
    /// Stripe only: forward committed usage to Stripe meters with this API key
    #[arg(long, value_name = "SK")]
    meter_api_key: Option<String>,
    /// Stripe only: a usage event name and the meter event name it goes to
    #[arg(long = "meter-event", value_name = "EVENT=METER")]
    meter_events: Vec<String>,
    /// Stripe only: the Stripe API base URL [default: https://api.stripe.com]
    #[arg(long, value_name = "URL")]
    meter_api_base: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the raw JSON answer
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List received biller events, newest first
    List {
        biller: BillerArg,
        /// Only events that were applied, ignored, stale, unresolved or failed
        #[arg(long)]
        status: Option<String>,
        /// Events to show, 1 to 500
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Show one received event with its raw body
    Show {
        biller: BillerArg,
        event_id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Apply a received event again (e.g. after a plan document now maps its price)
    Replay {
        biller: BillerArg,
        event_id: String,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the raw JSON answer
        #[arg(long)]
        json: bool,
    },
}

fn set_body(args: &SetArgs) -> Result<Value> {
    let mut body = Map::new();
    body.insert("webhookSecrets".into(), json!(args.secrets));
    if !args.user_id_from.is_empty() {
        body.insert("userIdFrom".into(), json!(args.user_id_from));
    }
    if !args.account_id_from.is_empty() {
        body.insert("accountIdFrom".into(), json!(args.account_id_from));
    }
    if let Some(t) = args.tolerance {
        body.insert("toleranceSeconds".into(), json!(t));
    }
    if let Some(key) = &args.meter_api_key {
        let mut names = Map::new();
        for pair in &args.meter_events {
            let Some((event, meter)) = pair.split_once('=') else {
                bail!("--meter-event takes EVENT=METER, e.g. image.render=image_generations");
            };
            names.insert(event.to_string(), json!(meter));
        }
        let mut forwarding = Map::new();
        forwarding.insert("enabled".into(), json!(true));
        forwarding.insert("apiKey".into(), json!(key));
        forwarding.insert("eventNames".into(), Value::Object(names));
        if let Some(base) = &args.meter_api_base {
            forwarding.insert("apiBase".into(), json!(base));
        }
        body.insert("meterForwarding".into(), Value::Object(forwarding));
    } else if !args.meter_events.is_empty() || args.meter_api_base.is_some() {
        bail!("meter forwarding needs --meter-api-key");
    }
    Ok(Value::Object(body))
}

fn print_integration(name: &str, i: &IntegrationResponse) {
    println!("{name} webhook endpoint: {}", i.webhook_path);
    println!("  signing secrets: {}", i.webhook_secrets.join(", "));
    println!("  user id from:    {}", i.user_id_from.join(", "));
    println!("  account id from: {}", i.account_id_from.join(", "));
    println!("  tolerance:       {} s", i.tolerance_seconds);
    if let Some(m) = &i.meter_forwarding {
        let on = if m.enabled { "on" } else { "off" };
        println!("  meter forwarding {on} to {}:", m.api_base);
        for (event, meter) in &m.event_names {
            println!("    {event} → {meter}");
        }
    }
}

fn print_answer(a: &WebhookAnswer) {
    let again = if a.duplicate { " (duplicate)" } else { "" };
    println!("{} {}{again}: {}", a.event_id, a.status, a.note);
}

pub async fn integrations(command: IntegrationsCommand) -> Result<()> {
    match command {
        IntegrationsCommand::Set(args) => {
            let remote = Remote::with_key(&args.remote)?;
            let body = set_body(&args)?;
            let name = args.biller.name();
            let answer = remote
                .call(Method::PUT, &["v1", "integrations", name], &[], Some(&body))
                .await?;
            if args.json {
                return print_json(&answer);
            }
            print_integration(name, &serde_json::from_value(answer)?);
            Ok(())
        }
        IntegrationsCommand::Show {
            biller,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let name = biller.name();
            let answer = remote
                .call(Method::GET, &["v1", "integrations", name], &[], None)
                .await?;
            if json {
                return print_json(&answer);
            }
            print_integration(name, &serde_json::from_value(answer)?);
            Ok(())
        }
        IntegrationsCommand::MapCustomer {
            biller,
            customer_id,
            user,
            account,
            remote,
        } => {
            let remote = Remote::with_key(&remote)?;
            let body = match (user, account) {
                (Some(u), _) => json!({ "userId": u }),
                (None, Some(a)) => json!({ "accountId": a }),
                (None, None) => bail!("give --user or --account"),
            };
            let path = [
                "v1",
                "integrations",
                biller.name(),
                "customers",
                &customer_id,
            ];
            let answer = remote.call(Method::PUT, &path, &[], Some(&body)).await?;
            println!("{customer_id} mapped");
            for replayed in answer["replayed"].as_array().into_iter().flatten() {
                print_answer(&serde_json::from_value(replayed.clone())?);
            }
            Ok(())
        }
    }
}

pub async fn webhooks(command: WebhooksCommand) -> Result<()> {
    match command {
        WebhooksCommand::List {
            biller,
            status,
            limit,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if let Some(s) = &status {
                query.push(("status", s));
            }
            let path = ["v1", "integrations", biller.name(), "events"];
            let answer = remote.call(Method::GET, &path, &query, None).await?;
            if json {
                return print_json(&answer);
            }
            let page: BillerEventsResponse = serde_json::from_value(answer)?;
            if page.events.is_empty() {
                println!("No {} events received.", biller.name());
            }
            for e in &page.events {
                println!(
                    "{}  {:<10} {:<36} {}  {}",
                    e.received_at, e.status, e.event_type, e.event_id, e.note
                );
            }
            Ok(())
        }
        WebhooksCommand::Show {
            biller,
            event_id,
            remote,
        } => {
            let remote = Remote::with_key(&remote)?;
            let path = ["v1", "integrations", biller.name(), "events", &event_id];
            print_json(&remote.call(Method::GET, &path, &[], None).await?)
        }
        WebhooksCommand::Replay {
            biller,
            event_id,
            remote,
            json,
        } => {
            let remote = Remote::with_key(&remote)?;
            let path = [
                "v1",
                "integrations",
                biller.name(),
                "events",
                &event_id,
                "replay",
            ];
            let answer = remote.call(Method::POST, &path, &[], None).await?;
            if json {
                return print_json(&answer);
            }
            print_answer(&serde_json::from_value(answer)?);
            Ok(())
        }
    }
}
