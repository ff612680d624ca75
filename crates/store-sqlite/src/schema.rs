//! The SQLite schema and its migrations, applied in order and recorded in `user_version`.
//!
//! Times are integer milliseconds since the Unix epoch (`*_ms`); quantities are integers.
//! Every metered row carries its `env_id`, and every lookup names it, so environments never mix.

use crate::internal;
use rusqlite::Connection;
use tollgate_store::schema::{refuse_newer, SchemaStatus};
use tollgate_store::StoreResult;

/// Each entry moves the schema one version up; never edit an entry that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE projects (
    project_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE environments (
    env_id INTEGER PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (project_id),
    mode TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    clock_offset_s INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project_id, mode)
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    env_id INTEGER NOT NULL REFERENCES environments (env_id),
    kind TEXT NOT NULL CHECK (kind IN ('secret', 'publishable')),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE TABLE plan_documents (
    env_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, version)
);

CREATE TABLE subscriptions (
    env_id INTEGER NOT NULL,
    subject TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,
    cycle_start_ms INTEGER NOT NULL,
    ends_at_ms INTEGER,
    custom_limits TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, subject)
);

CREATE TABLE subscription_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    env_id INTEGER NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    from_plan_id TEXT,
    to_plan_id TEXT,
    source TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX subscription_history_subject ON subscription_history (env_id, subject, seq);

CREATE TABLE reservations (
    env_id INTEGER NOT NULL,
    reservation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    plan_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'released', 'expired')),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    final_quantity INTEGER,
    overage INTEGER,
    prompt TEXT,
    prompt_truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env_id, reservation_id)
);
CREATE INDEX reservations_pending ON reservations (expires_at_ms) WHERE status = 'pending';

CREATE TABLE reservation_limits (
    env_id INTEGER NOT NULL,
    reservation_id TEXT NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key INTEGER NOT NULL,
    window_start_ms INTEGER,
    window_end_ms INTEGER,
    window_type TEXT NOT NULL,
    window_seconds INTEGER NOT NULL,
    kind TEXT NOT NULL,
    enforcement TEXT NOT NULL,
    scope TEXT NOT NULL,
    multiplier INTEGER NOT NULL,
    quota INTEGER NOT NULL,
    units INTEGER NOT NULL,
    held INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, reservation_id, limit_id)
);
CREATE INDEX reservation_limits_held
    ON reservation_limits (env_id, limit_id, subject, window_key) WHERE held > 0;

CREATE TABLE counters (
    env_id INTEGER NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key INTEGER NOT NULL,
    window_end_ms INTEGER,
    used INTEGER NOT NULL,
    PRIMARY KEY (env_id, limit_id, subject, window_key)
) WITHOUT ROWID;

CREATE TABLE rolling_usage (
    env_id INTEGER NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    units INTEGER NOT NULL
);
CREATE INDEX rolling_usage_counter ON rolling_usage (env_id, limit_id, subject, at_ms);

CREATE TABLE events (
    env_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    account_id TEXT,
    event TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    cost_micros INTEGER,
    status TEXT NOT NULL,
    plan_id TEXT,
    reservation_id TEXT,
    reasons TEXT NOT NULL,
    overage INTEGER NOT NULL DEFAULT 0,
    prompt TEXT,
    response TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    release_reason TEXT,
    release_error_code TEXT,
    PRIMARY KEY (env_id, event_id)
);
CREATE INDEX events_time ON events (env_id, occurred_at_ms);
CREATE INDEX events_user_time ON events (env_id, user_id, occurred_at_ms);

CREATE TABLE idempotency (
    env_id INTEGER NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
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
    env_id INTEGER NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, anonymous_id)
);
CREATE INDEX aliases_user ON aliases (env_id, user_id);
ALTER TABLE events ADD COLUMN anonymous_id TEXT;
"#,
    r#"
-- 4: accounts: which account each user belongs to (at most one).
CREATE TABLE account_members (
    env_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, user_id)
);
CREATE INDEX account_members_account ON account_members (env_id, account_id, user_id);
"#,
    r#"
-- 5: a reservation committed after it expired (`ifExpired: record`); its event_id is then
-- the late commit's usage event.
ALTER TABLE reservations ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- 6: credits. A grant says what was granted and never changes; its balance is its ledger:
-- append-only entries, each with the balance after it. Holds say which grants a reservation
-- drew on (`active` while pending); `credit_revocations` which grants were revoked (a part
-- held then is revoked when it returns); `rollovers` which windows rolled over already.
CREATE TABLE credit_grants (
    env_id INTEGER NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    pack_id TEXT,
    item_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    rules TEXT NOT NULL,
    expires_at_ms INTEGER,
    source TEXT NOT NULL,
    external_ref TEXT,
    note TEXT,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);
CREATE INDEX credit_grants_subject ON credit_grants (env_id, subject);
CREATE INDEX credit_grants_ref ON credit_grants (env_id, external_ref)
    WHERE external_ref IS NOT NULL;
-- Grants whose expiry the sweeper has still to write, a row each until it has.
CREATE TABLE credit_expiry_queue (
    env_id INTEGER NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);
CREATE INDEX credit_expiry_queue_due ON credit_expiry_queue (expires_at_ms);

CREATE TABLE credit_ledger (
    seq INTEGER PRIMARY KEY,
    env_id INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT,
    quantity INTEGER NOT NULL,
    remaining_after INTEGER NOT NULL,
    held_after INTEGER NOT NULL,
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
    env_id INTEGER NOT NULL,
    reservation_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL,
    held INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (env_id, reservation_id, grant_id)
);
CREATE INDEX credit_holds_grant ON credit_holds (env_id, grant_id) WHERE active = 1;
CREATE INDEX credit_holds_user ON credit_holds (env_id, user_id) WHERE active = 1;

CREATE TABLE credit_revocations (
    env_id INTEGER NOT NULL,
    grant_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, grant_id)
);

CREATE TABLE rollovers (
    env_id INTEGER NOT NULL,
    limit_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    window_key INTEGER NOT NULL,
    grant_id TEXT,
    PRIMARY KEY (env_id, limit_id, subject, window_key)
);

ALTER TABLE events ADD COLUMN credits_used INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- 7: an account subscription's own seat cap (per-seat pricing); NULL: the plan's `seats`.
ALTER TABLE subscriptions ADD COLUMN seats INTEGER;
"#,
    r#"
-- 8: billers (API.md §10). An environment's integration with each biller (its webhook
-- endpoint id is unique across the install); which Stripe meter event each usage event name
-- is forwarded to; biller customers mapped to subjects; received events (deduplication,
-- inspection, replay; purged after 30 days); the newest snapshot applied of each biller
-- subscription; the outbox of usage events on their way to Stripe meters (leased by a node
-- while it sends them); the environment's settings document.
CREATE TABLE biller_integrations (
    env_id INTEGER NOT NULL,
    biller TEXT NOT NULL,
    endpoint_id TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, biller)
);

CREATE TABLE meter_names (
    env_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    meter_event_name TEXT NOT NULL,
    PRIMARY KEY (env_id, event)
);

CREATE TABLE biller_customers (
    env_id INTEGER NOT NULL,
    biller TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    mapped_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, biller, customer_id)
);
CREATE INDEX biller_customers_subject
    ON biller_customers (env_id, biller, subject, mapped_at_ms);

CREATE TABLE biller_events (
    env_id INTEGER NOT NULL,
    biller TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    customer_id TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('applied', 'ignored', 'stale', 'unresolved', 'failed')),
    note TEXT NOT NULL,
    body TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    PRIMARY KEY (env_id, biller, event_id)
);
CREATE INDEX biller_events_time ON biller_events (env_id, biller, received_at_ms, event_id);
CREATE INDEX biller_events_age ON biller_events (received_at_ms);

CREATE TABLE biller_snapshots (
    env_id INTEGER NOT NULL,
    biller TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    period_start_ms INTEGER,
    ended INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env_id, biller, subscription_id)
);
CREATE INDEX biller_snapshots_subject ON biller_snapshots (env_id, biller, subject);

CREATE TABLE meter_outbox (
    env_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    meter_event_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    value INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    lease_until_ms INTEGER,
    last_status INTEGER,
    last_error TEXT,
    last_attempt_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, event_id)
);
CREATE INDEX meter_outbox_due ON meter_outbox (status, next_attempt_at_ms);
CREATE INDEX meter_outbox_time ON meter_outbox (env_id, created_at_ms, event_id);

CREATE TABLE settings (
    env_id INTEGER PRIMARY KEY,
    document TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
"#,
    // 9: the engine's command log position the tables hold (see `engine`): every record up to
    // `applied_lsn` is in the tables, written in the transaction that wrote this row.
    r#"
CREATE TABLE engine_log (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applied_lsn INTEGER NOT NULL
);
INSERT INTO engine_log (id, applied_lsn) VALUES (1, 0);
"#,
    // 10: the same reservations table, its status CHECK written as comparisons. With
    // `status IN (...)` SQLite builds a temporary b-tree of the list (a page allocated and
    // zeroed, some 5,000 instructions under callgrind) at every insert and every status
    // update; `=`/`OR` checks the same four values without it. SQLite cannot change a CHECK
    // in place, so the table is copied (rowids kept) and its index made again.
    r#"
CREATE TABLE reservations_new (
    env_id INTEGER NOT NULL,
    reservation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    plan_id TEXT,
    status TEXT NOT NULL CHECK (status = 'pending' OR status = 'committed'
        OR status = 'released' OR status = 'expired'),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    final_quantity INTEGER,
    overage INTEGER,
    prompt TEXT,
    prompt_truncated INTEGER NOT NULL DEFAULT 0,
    late INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env_id, reservation_id)
);
INSERT INTO reservations_new (rowid, env_id, reservation_id, user_id, event, quantity, metadata,
    plan_id, status, created_at_ms, expires_at_ms, event_id, final_quantity, overage, prompt,
    prompt_truncated, late)
SELECT rowid, env_id, reservation_id, user_id, event, quantity, metadata, plan_id, status,
    created_at_ms, expires_at_ms, event_id, final_quantity, overage, prompt, prompt_truncated, late
FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
CREATE INDEX reservations_pending ON reservations (expires_at_ms) WHERE status = 'pending';
"#,
    // 11: pending reservations by environment, then expiry. The sweep asks each environment
    // for what is due by its own clock; with the index on `expires_at_ms` alone SQLite walked
    // every pending reservation (and its row) once a second, 10-25 ms with 130,000 pending.
    r#"
CREATE INDEX reservations_due ON reservations (env_id, expires_at_ms) WHERE status = 'pending';
DROP INDEX reservations_pending;
"#,
    // 12: each environment's user-token secret (browser surface, API.md §12), made once on
    // first use and kept apart from the settings document, which callers read and rewrite.
    r#"
CREATE TABLE environment_secrets (
    env_id INTEGER PRIMARY KEY,
    token_secret TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"#,
    r#"
-- 13: product events (POST /v1/capture, API.md §9): never metered, read by funnels beside
-- the usage events. `subject` is the user id, or an anonymous id an identify may map later.
CREATE TABLE captures (
    env_id INTEGER NOT NULL,
    capture_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    event TEXT NOT NULL,
    properties TEXT NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (env_id, capture_id)
);
CREATE INDEX captures_event_time ON captures (env_id, event, occurred_at_ms);
"#,
    r#"
-- 14: committed and tracked usage summed per environment, UTC day, user and plan ('' for
-- none): top users and margins over a month read about 30 rows a user instead of every event
-- (docs/analytics.md). Kept by the same statement that records a usage event, moved with its
-- events by identify; filled here from the events already stored.
CREATE TABLE usage_daily (
    env_id INTEGER NOT NULL,
    day_ms INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    events INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    PRIMARY KEY (env_id, day_ms, user_id, plan_id)
) WITHOUT ROWID;
INSERT INTO usage_daily (env_id, day_ms, user_id, plan_id, events, quantity, cost_micros)
SELECT env_id, occurred_at_ms - (occurred_at_ms % 86400000), user_id, COALESCE(plan_id, ''),
       COUNT(*), SUM(quantity), SUM(COALESCE(cost_micros, 0))
  FROM events WHERE status IN ('committed', 'tracked')
 GROUP BY env_id, occurred_at_ms - (occurred_at_ms % 86400000), user_id, COALESCE(plan_id, '');
"#,
    // 15: persons (API.md §9): each user's traits as `POST /v1/identify` merged them (a JSON
    // object), deleted with the user by `DELETE /v1/users/{userId}`. And the rows that still
    // hold a logged prompt or response, by environment and time (the retention purge) and by
    // user (erasure): partial indexes, so they hold only the rows with text and cost nothing
    // while prompt logging is off.
    r#"
CREATE TABLE persons (
    env_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    traits TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
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

fn version(conn: &Connection) -> StoreResult<usize> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(internal)
}

/// Brings the database to the newest schema version, each step in its own transaction; a
/// database newer than this binary is refused.
pub fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current = version(conn)?;
    refuse_newer(current, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()
        };
        run(conn).map_err(internal)?;
    }
    Ok(())
}

/// What [`migrate`] would do to this database.
pub fn status(conn: &Connection) -> StoreResult<SchemaStatus> {
    status_at(version(conn)?)
}

/// What [`migrate`] would do to a database at `version`.
pub fn status_at(version: usize) -> StoreResult<SchemaStatus> {
    SchemaStatus::of(version, MIGRATIONS)
}
