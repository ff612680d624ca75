//! The PostgreSQL schema and its migrations, recorded in `tollgate_schema_version` and applied
//! under an advisory lock so that nodes starting together migrate once.
//!
//! Times are BIGINT milliseconds since the Unix epoch (`*_ms`), as in the SQLite schema, so
//! both adapters convert times the same way. Every metered table leads with `env_id`; for a
//! sharded PostgreSQL the distribution key is (`env_id`, `subject`) — see docs/scaling.md.

use crate::pool::pg_error;
use postgres::Client;
use tollgate_store::schema::{refuse_newer, SchemaStatus};
use tollgate_store::{StoreError, StoreResult};

/// An arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// Each entry moves the schema one version up; never edit an entry that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE projects (
    project_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE environments (
    env_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (project_id),
    mode TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    clock_offset_s BIGINT NOT NULL DEFAULT 0,
    UNIQUE (project_id, mode)
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    env_id BIGINT NOT NULL REFERENCES environments (env_id),
    kind TEXT NOT NULL CHECK (kind IN ('secret', 'publishable')),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE plan_documents (
    env_id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, version)
);

CREATE TABLE subscriptions (
    env_id BIGINT NOT NULL,
    subject TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,
    cycle_start_ms BIGINT NOT NULL,
    ends_at_ms BIGINT,
    custom_limits JSONB NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, subject)
);

CREATE TABLE subscription_history (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env_id BIGINT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    from_plan_id TEXT,
    to_plan_id TEXT,
    source TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX subscription_history_subject ON subscription_history (env_id, subject, seq);

CREATE TABLE reservations (
    env_id BIGINT NOT NULL,
    reservation_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    metadata JSONB NOT NULL,
    plan_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'released', 'expired')),
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    final_quantity BIGINT,
    overage BIGINT,
    prompt TEXT,
    prompt_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (env_id, reservation_id)
);
CREATE INDEX reservations_pending ON reservations (expires_at_ms) WHERE status = 'pending';

CREATE TABLE reservation_limits (
    env_id BIGINT NOT NULL,
    reservation_id TEXT NOT NULL,
    seq INT NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key BIGINT NOT NULL,
    window_start_ms BIGINT,
    window_end_ms BIGINT,
    window_type TEXT NOT NULL,
    window_seconds BIGINT NOT NULL,
    kind TEXT NOT NULL,
    enforcement TEXT NOT NULL,
    scope TEXT NOT NULL,
    multiplier BIGINT NOT NULL,
    quota BIGINT NOT NULL,
    units BIGINT NOT NULL,
    held BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, reservation_id, limit_id)
);
CREATE INDEX reservation_limits_held
    ON reservation_limits (env_id, limit_id, subject, window_key) WHERE held > 0;

CREATE TABLE counters (
    env_id BIGINT NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key BIGINT NOT NULL,
    window_end_ms BIGINT,
    used BIGINT NOT NULL,
    PRIMARY KEY (env_id, subject, limit_id, window_key)
);

CREATE TABLE rolling_usage (
    env_id BIGINT NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    units BIGINT NOT NULL
);
CREATE INDEX rolling_usage_counter ON rolling_usage (env_id, subject, limit_id, at_ms);

CREATE TABLE events (
    env_id BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    account_id TEXT,
    event TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    metadata JSONB NOT NULL,
    cost_micros BIGINT,
    status TEXT NOT NULL,
    plan_id TEXT,
    reservation_id TEXT,
    reasons JSONB NOT NULL,
    overage BIGINT NOT NULL DEFAULT 0,
    prompt TEXT,
    response TEXT,
    truncated BOOLEAN NOT NULL DEFAULT FALSE,
    release_reason TEXT,
    release_error_code TEXT,
    PRIMARY KEY (env_id, event_id)
);
CREATE INDEX events_time ON events (env_id, occurred_at_ms);
CREATE INDEX events_user_time ON events (env_id, user_id, occurred_at_ms);

CREATE TABLE idempotency (
    env_id BIGINT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, scope, key)
);
CREATE INDEX idempotency_age ON idempotency (created_at_ms);
"#,
    r#"
-- 2: a subscriber's own time zone for calendar windows (IANA name; NULL: the limit's).
ALTER TABLE subscriptions ADD COLUMN timezone TEXT;
"#,
    r#"
-- 3: anonymous ids identified as users (POST /v1/identify), and the anonymous id an event
-- was recorded under before it moved to its user.
CREATE TABLE aliases (
    env_id BIGINT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, anonymous_id)
);
CREATE INDEX aliases_user ON aliases (env_id, user_id);
ALTER TABLE events ADD COLUMN anonymous_id TEXT;
"#,
    r#"
-- 4: accounts: which account each user belongs to (at most one).
CREATE TABLE account_members (
    env_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, user_id)
);
CREATE INDEX account_members_account ON account_members (env_id, account_id, user_id);
"#,
    r#"
-- 5: a reservation committed after it expired (`ifExpired: record`); its event_id is then
-- the late commit's usage event.
ALTER TABLE reservations ADD COLUMN late BOOLEAN NOT NULL DEFAULT false;
"#,
    r#"
-- 6: credits. A grant says what was granted and never changes; its balance is its ledger:
-- append-only entries, each with the balance after it. Holds say which grants a reservation
-- drew on (`active` while pending); `credit_revocations` which grants were revoked (a part
-- held then is revoked when it returns); `rollovers` which windows rolled over already.
CREATE TABLE credit_grants (
    env_id BIGINT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    pack_id TEXT,
    item_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    priority INTEGER NOT NULL,
    rules TEXT NOT NULL,
    expires_at_ms BIGINT,
    source TEXT NOT NULL,
    external_ref TEXT,
    note TEXT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);
CREATE INDEX credit_grants_subject ON credit_grants (env_id, subject);
CREATE INDEX credit_grants_ref ON credit_grants (env_id, external_ref)
    WHERE external_ref IS NOT NULL;
-- Grants whose expiry the sweeper has still to write, a row each until it has.
CREATE TABLE credit_expiry_queue (
    env_id BIGINT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);
CREATE INDEX credit_expiry_queue_due ON credit_expiry_queue (expires_at_ms);

CREATE TABLE credit_ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env_id BIGINT NOT NULL,
    entry_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT,
    quantity BIGINT NOT NULL,
    remaining_after BIGINT NOT NULL,
    held_after BIGINT NOT NULL,
    reservation_id TEXT,
    event_id TEXT,
    external_ref TEXT,
    reason TEXT NOT NULL,
    UNIQUE (env_id, entry_id)
);
CREATE INDEX credit_ledger_grant ON credit_ledger (env_id, grant_id, seq);
CREATE INDEX credit_ledger_subject ON credit_ledger (env_id, subject, seq);
CREATE INDEX credit_ledger_user ON credit_ledger (env_id, user_id, seq)
    WHERE user_id IS NOT NULL;
CREATE INDEX credit_ledger_reservation ON credit_ledger (env_id, reservation_id)
    WHERE reservation_id IS NOT NULL;

CREATE TABLE credit_holds (
    env_id BIGINT NOT NULL,
    reservation_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL,
    held BIGINT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT true,
    PRIMARY KEY (env_id, reservation_id, grant_id)
);
CREATE INDEX credit_holds_grant ON credit_holds (env_id, grant_id) WHERE active;
CREATE INDEX credit_holds_user ON credit_holds (env_id, user_id) WHERE active;

CREATE TABLE credit_revocations (
    env_id BIGINT NOT NULL,
    grant_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);

CREATE TABLE rollovers (
    env_id BIGINT NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key BIGINT NOT NULL,
    grant_id TEXT,
    PRIMARY KEY (env_id, limit_id, subject, window_key)
);

ALTER TABLE events ADD COLUMN credits_used BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
-- 7: an account subscription's own seat cap (per-seat pricing); NULL: the plan's `seats`.
-- BIGINT: a cap goes up to 2^32-1, past INTEGER.
ALTER TABLE subscriptions ADD COLUMN seats BIGINT;
"#,
    r#"
-- 8: billers (API.md §10). An environment's integration with each biller (its webhook
-- endpoint id is unique across the install); which Stripe meter event each usage event name
-- is forwarded to; biller customers mapped to subjects; received events (deduplication,
-- inspection, replay; purged after 30 days); the newest snapshot applied of each biller
-- subscription; the outbox of usage events on their way to Stripe meters (leased by a node
-- while it sends them); the environment's settings document.
CREATE TABLE biller_integrations (
    env_id BIGINT NOT NULL,
    biller TEXT NOT NULL,
    endpoint_id TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, biller)
);

CREATE TABLE meter_names (
    env_id BIGINT NOT NULL,
    event TEXT NOT NULL,
    meter_event_name TEXT NOT NULL,
    PRIMARY KEY (env_id, event)
);

CREATE TABLE biller_customers (
    env_id BIGINT NOT NULL,
    biller TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    mapped_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, biller, customer_id)
);
CREATE INDEX biller_customers_subject
    ON biller_customers (env_id, biller, subject, mapped_at_ms);

CREATE TABLE biller_events (
    env_id BIGINT NOT NULL,
    biller TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    customer_id TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('applied', 'ignored', 'stale', 'unresolved', 'failed')),
    note TEXT NOT NULL,
    body TEXT NOT NULL,
    deliveries BIGINT NOT NULL,
    PRIMARY KEY (env_id, biller, event_id)
);
CREATE INDEX biller_events_time ON biller_events (env_id, biller, received_at_ms, event_id);
CREATE INDEX biller_events_age ON biller_events (received_at_ms);

CREATE TABLE biller_snapshots (
    env_id BIGINT NOT NULL,
    biller TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    period_start_ms BIGINT,
    ended BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (env_id, biller, subscription_id)
);
CREATE INDEX biller_snapshots_subject ON biller_snapshots (env_id, biller, subject);

CREATE TABLE meter_outbox (
    env_id BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    meter_event_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    value BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT,
    last_status BIGINT,
    last_error TEXT,
    last_attempt_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, event_id)
);
CREATE INDEX meter_outbox_due ON meter_outbox (status, next_attempt_at_ms);
CREATE INDEX meter_outbox_time ON meter_outbox (env_id, created_at_ms, event_id);

CREATE TABLE settings (
    env_id BIGINT PRIMARY KEY,
    document TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
"#,
    r#"
-- 9: pending reservations by environment, then expiry. The sweep asks each environment for
-- what is due by its own clock; with the index on expires_at_ms alone PostgreSQL read the
-- whole reservations table once a second on every node (52 ms with 200,000 rows).
CREATE INDEX reservations_due ON reservations (env_id, expires_at_ms) WHERE status = 'pending';
DROP INDEX reservations_pending;
"#,
    r#"
-- 10: each environment's user-token secret (browser surface, API.md §12), made once on first
-- use and kept apart from the settings document, which callers read and rewrite.
CREATE TABLE environment_secrets (
    env_id BIGINT PRIMARY KEY,
    token_secret TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
"#,
    r#"
-- 11: product events (POST /v1/capture, API.md §9): never metered, read by funnels beside
-- the usage events. `subject` is the user id, or an anonymous id an identify may map later.
CREATE TABLE captures (
    env_id BIGINT NOT NULL,
    capture_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    event TEXT NOT NULL,
    properties JSONB NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, capture_id)
);
CREATE INDEX captures_event_time ON captures (env_id, event, occurred_at_ms);
"#,
    r#"
-- 12: committed and tracked usage summed per environment, UTC day, user and plan ('' for
-- none): top users and margins over a month read about 30 rows a user instead of every event
-- (docs/analytics.md). Kept by the same statement that records a usage event, moved with its
-- events by identify; filled here from the events already stored.
CREATE TABLE usage_daily (
    env_id BIGINT NOT NULL,
    day_ms BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    events BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    PRIMARY KEY (env_id, day_ms, user_id, plan_id)
);
INSERT INTO usage_daily (env_id, day_ms, user_id, plan_id, events, quantity, cost_micros)
SELECT env_id, occurred_at_ms - (occurred_at_ms % 86400000), user_id, COALESCE(plan_id, ''),
       COUNT(*), SUM(quantity), SUM(COALESCE(cost_micros, 0))
  FROM events WHERE status IN ('committed', 'tracked')
 GROUP BY env_id, occurred_at_ms - (occurred_at_ms % 86400000), user_id, COALESCE(plan_id, '');
"#,
    r#"
-- 13: persons (API.md §9): each user's traits as POST /v1/identify merged them (a JSON
-- object), deleted with the user by DELETE /v1/users/{userId}. And the rows that still hold a
-- logged prompt or response, by environment and time (the retention purge) and by user
-- (erasure): partial indexes, so they hold only the rows with text and cost nothing while
-- prompt logging is off.
CREATE TABLE persons (
    env_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    traits JSONB NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (env_id, user_id)
);
CREATE INDEX events_logged ON events (env_id, occurred_at_ms)
    WHERE prompt IS NOT NULL OR response IS NOT NULL;
CREATE INDEX events_logged_user ON events (env_id, user_id)
    WHERE prompt IS NOT NULL OR response IS NOT NULL;
CREATE INDEX reservations_logged ON reservations (env_id, created_at_ms)
    WHERE prompt IS NOT NULL;
CREATE INDEX reservations_logged_user ON reservations (env_id, user_id)
    WHERE prompt IS NOT NULL;
"#,
];

/// What [`migrate`] would do to this database, read without writing.
pub fn status(client: &mut Client) -> StoreResult<SchemaStatus> {
    let table: Option<String> = client
        .query_one("SELECT to_regclass('tollgate_schema_version')::text", &[])
        .map_err(|e| pg_error(&e))?
        .get(0);
    let current = match table {
        None => 0,
        Some(_) => client
            .query_opt("SELECT version FROM tollgate_schema_version", &[])
            .map_err(|e| pg_error(&e))?
            .map_or(0, |r| r.get::<_, i64>(0).max(0) as usize),
    };
    SchemaStatus::of(current, MIGRATIONS)
}

/// Brings the database to the newest schema version. Safe to run from every node at once.
/// A database newer than this binary is refused.
pub fn migrate(client: &mut Client) -> StoreResult<usize> {
    migrate_tx(client).map_err(|e| match e {
        Migrate::Pg(e) => pg_error(&e),
        Migrate::Store(e) => e,
    })
}

enum Migrate {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Migrate {
    fn from(e: postgres::Error) -> Self {
        Migrate::Pg(e)
    }
}

fn migrate_tx(client: &mut Client) -> Result<usize, Migrate> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tollgate_schema_version (version BIGINT NOT NULL)",
    )?;
    let current: Option<i64> = tx
        .query_opt("SELECT version FROM tollgate_schema_version", &[])?
        .map(|r| r.get(0));
    let current = current.unwrap_or(0).max(0) as usize;
    refuse_newer(current, MIGRATIONS.len()).map_err(Migrate::Store)?;
    if current == 0 {
        tx.execute("INSERT INTO tollgate_schema_version VALUES (0)", &[])?;
    }
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql)?;
        tx.execute(
            "UPDATE tollgate_schema_version SET version = $1",
            &[&((i + 1) as i64)],
        )?;
        applied += 1;
    }
    tx.commit()?;
    Ok(applied)
}
