//! `tollgate`, the one binary: it creates an install (`init`), runs the server (`serve`), and
//! talks to a running server for everyday chores (`plans`, `keys`, `usage`, `credits`).
//!
//! Local commands open the store directly; remote ones are thin HTTP clients of the API, so
//! they work against any server and need only a key.

mod bench;
mod billing;
mod credits;
mod health;
mod local;
mod ops;
mod plans;
mod redis_ref;
mod remote;
mod settings;
mod table;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version = env!("TOLLGATE_VERSION"),
    about = "Self-hosted metering and limits for AI apps",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new install: the database, a project, the admin token and its first keys.
    Init(InitArgs),
    /// Run the HTTP server (creating the install first if the data dir is empty).
    Serve(ServeArgs),
    /// Apply the database schema migrations (`serve` also applies them when it starts).
    Migrate(MigrateArgs),
    /// Copy an embedded (SQLite) install into one backup file, consistently, while it runs.
    Backup(BackupArgs),
    /// Make a new data dir from a backup file.
    Restore(RestoreArgs),
    /// Install-wide chores: rotate the admin token.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Exit 0 when a server's `/readyz` answers 200 (the container image's HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
    /// Apply or export the plan document of a key's environment.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Create, list and revoke API keys (with the admin token).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show a user's limits and what is left of them.
    Usage(UsageArgs),
    /// Grant, show, revoke credits and read their ledger.
    #[command(subcommand)]
    Credits(credits::CreditsCommand),
    /// Set and show an environment's Stripe or Polar integration, map customers.
    #[command(subcommand)]
    Integrations(billing::IntegrationsCommand),
    /// List, show and replay the biller events an environment received.
    #[command(subcommand)]
    Webhooks(billing::WebhooksCommand),
    /// Load a server (or one started on a temp dir) and check that quotas stayed exact.
    Bench(bench::BenchArgs),
    /// Load synthetic usage events into an install's test environment, for benchmarks
    /// (docs/analytics.md, BENCHMARKS.md); the server must not run on a SQLite data dir.
    SeedEvents(SeedEventsArgs),
}

#[derive(Debug, Args)]
struct SeedEventsArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Events to append (1 to 1,000,000,000)
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Users they spread over (`seed_u0` … ; 1 to 10,000,000)
    #[arg(long, default_value_t = 10_000)]
    users: u64,
}

/// Where the data lives; `init` and `serve` take the same options.
#[derive(Debug, Args)]
struct StorageArgs {
    /// Directory of the SQLite database [default: ./tollgate-data]
    #[arg(long, env = "TOLLGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Storage URL: absent or `sqlite:[DIR]` for the embedded store, `postgres://…` for
    /// PostgreSQL (several nodes on one database)
    #[arg(
        long,
        env = "TOLLGATE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// A TOML file with the same settings (see tollgate.example.toml)
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Embedded store only: decide metering from memory and make each write durable with one
    /// append to a command log, the tables filled behind it (docs/scaling.md) [default: false]
    #[arg(
        long,
        env = "TOLLGATE_ENGINE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    engine: Option<bool>,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Print exactly the JSON object of the new secrets on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Print the migrations that would run, and run none
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The data dir of the install (a server may be running on it)
    #[arg(long, env = "TOLLGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The backup file to write; it must not exist
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// A file written by `tollgate backup`
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The data dir to create; it must not exist or be empty
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Replace the admin token: the old one stops working at once, the new one is printed
    /// once. With the admin token it asks a running server; without, on `--data-dir` or
    /// `--database-url`, it writes the store directly (for a lost token).
    RotateToken(RotateTokenArgs),
}

#[derive(Debug, Args)]
struct RotateTokenArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Write the new token into the install's store instead of asking a server (when the
    /// old token is lost); the keys file in the data dir is updated too
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    storage: StorageArgs,
    /// Print exactly `{"adminToken": "…"}` on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    /// Base URL of the Tollgate server
    #[arg(long, env = "TOLLGATE_HEALTHCHECK_URL", default_value = remote::URL_DEFAULT)]
    url: String,
}

/// How `serve` writes its log lines.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    /// One line of text per event, for a terminal
    #[default]
    Text,
    /// One JSON object per line, for log shippers
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:7070]
    #[arg(long, env = "TOLLGATE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// How often expired reservations are swept, in milliseconds [default: 1000]
    #[arg(long, env = "TOLLGATE_SWEEP_INTERVAL_MS", value_name = "MS")]
    sweep_interval_ms: Option<u64>,
    /// Longest a request may run before it answers 503, in milliseconds [default: 30000]
    #[arg(long, env = "TOLLGATE_REQUEST_TIMEOUT_MS", value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Log lines as text or as one JSON object each
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// A running server and a project key.
#[derive(Debug, Args)]
struct RemoteArgs {
    /// Base URL of the Tollgate server
    #[arg(long, env = "TOLLGATE_URL", default_value = remote::URL_DEFAULT)]
    url: String,
    /// API key; it decides project and environment
    #[arg(long, env = "TOLLGATE_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// A running server and the admin token.
#[derive(Debug, Args)]
struct AdminArgs {
    /// Base URL of the Tollgate server
    #[arg(long, env = "TOLLGATE_URL", default_value = remote::URL_DEFAULT)]
    url: String,
    /// The install's admin token (`tg_admin_…`)
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PlansCommand {
    /// Replace the environment's plan document with FILE (.json or .toml)
    Apply {
        /// The plan document
        file: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print the stored document as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the environment's plan document
    Export {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Output format
        #[arg(long, value_enum, default_value_t = plans::Format::Json)]
        format: plans::Format,
    },
    /// Show what promoting one environment's plans to the other would change
    Diff {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The environment promoted from
        #[arg(long, value_enum, default_value_t = plans::Env::Test)]
        from: plans::Env,
        /// The environment promoted to
        #[arg(long, value_enum, default_value_t = plans::Env::Live)]
        to: plans::Env,
        /// Print the diff as JSON
        #[arg(long)]
        json: bool,
    },
    /// Copy one environment's plans to the other (after showing the diff and asking)
    Promote {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The environment promoted from
        #[arg(long, value_enum, default_value_t = plans::Env::Test)]
        from: plans::Env,
        /// The environment promoted to
        #[arg(long, value_enum, default_value_t = plans::Env::Live)]
        to: plans::Env,
        /// Promote without asking (for scripts); the diff is still printed
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Environment {
    Live,
    Test,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    Secret,
    Publishable,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once
    Create {
        /// Project id (`prj_…`)
        #[arg(long)]
        project: String,
        #[arg(long, value_enum)]
        environment: Environment,
        #[arg(long, value_enum)]
        kind: KeyKind,
        /// A name to recognise the key by
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the answer as JSON
        #[arg(long)]
        json: bool,
    },
    /// List a project's keys (never the keys themselves)
    List {
        /// Project id (`prj_…`)
        #[arg(long)]
        project: String,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the answer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once
    Revoke {
        /// Key id (`key_…`)
        key_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
struct UsageArgs {
    /// The app's user id
    user: String,
    /// Only the limits that count this event
    #[arg(long)]
    event: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the raw JSON answer
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => local::init(args).await,
        Command::Serve(args) => local::serve(args).await,
        Command::Migrate(args) => local::migrate(args).await,
        Command::Backup(args) => ops::backup(args).await,
        Command::Restore(args) => ops::restore(args).await,
        Command::Admin(AdminCommand::RotateToken(args)) => ops::rotate_token(args).await,
        Command::Healthcheck(args) => health::run(args).await,
        Command::Plans(command) => plans::run(command).await,
        Command::Keys(command) => remote::keys(command).await,
        Command::Usage(args) => remote::usage(args).await,
        Command::Credits(command) => credits::run(command).await,
        Command::Integrations(command) => billing::integrations(command).await,
        Command::Webhooks(command) => billing::webhooks(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::SeedEvents(args) => local::seed_events(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
