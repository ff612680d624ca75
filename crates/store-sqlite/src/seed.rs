//! Bulk-loads synthetic usage events into a data dir, for benchmarks only
//! (`tollgate bench --seed-events`): how the hot path's cost grows with the events already
//! stored can only be measured on a database that holds many.
//!
//! The rows ([`tollgate_store::seed`]) go straight into the `events` table of the install's
//! test environment, in large transactions with `synchronous=OFF` (a crash mid-load loses only
//! bench data). They are usage of past days; counters are not touched, so no quota is used up.

use crate::{internal, open_writer, DATABASE_FILE};
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use tollgate_store::analytics::{counted, day_of};
use tollgate_store::seed::seed_event;
use tollgate_store::{StoreError, StoreResult};

/// Rows per transaction.
const SEED_BATCH_ROWS: u64 = 200_000;
/// Page cache of the loading connection, in KiB: the user-time index stays in memory.
const SEED_CACHE_KIB: i64 = 1024 * 1024;

/// Appends `events` synthetic events spread over `users` users (`seed_u<n>`) and the last
/// [`tollgate_store::seed::SEED_DAYS`] days, calling `progress` with the rows written so far after each transaction.
/// The data dir must hold an install (`tollgate init`) and no running server.
pub fn seed_events(
    data_dir: &Path,
    events: u64,
    users: u64,
    mut progress: impl FnMut(u64),
) -> StoreResult<()> {
    if users == 0 {
        return Err(StoreError::Internal(
            "seeding needs at least one user".into(),
        ));
    }
    let _lock = crate::admin::lock_data_dir(data_dir)?;
    let conn = open_writer(&data_dir.join(DATABASE_FILE))?;
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(internal)?;
    conn.pragma_update(None, "cache_size", -SEED_CACHE_KIB)
        .map_err(internal)?;
    let env: Option<i64> = conn
        .query_row(
            "SELECT env_id FROM environments WHERE mode = 'test' ORDER BY env_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(internal)?;
    let Some(env) = env else {
        return Err(StoreError::Internal(
            "no test environment to seed; run `tollgate init` first".into(),
        ));
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let mut written = 0;
    while written < events {
        let rows = SEED_BATCH_ROWS.min(events - written);
        let tx = conn.unchecked_transaction().map_err(internal)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (env_id, event_id, occurred_at_ms, user_id, event,
                         quantity, metadata, cost_micros, status, plan_id, reasons)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(internal)?;
            // The batch's daily rollup, added once per (day, user, plan) after its rows.
            let mut days: HashMap<(i64, String, &str), (i64, i64, i64)> = HashMap::new();
            for i in written..written + rows {
                let e = seed_event(i, events, users, now_ms);
                if counted(e.status) {
                    let day = days
                        .entry((day_of(e.at_ms), e.user_id.clone(), e.plan_id))
                        .or_default();
                    *day = (
                        day.0 + 1,
                        day.1 + e.quantity,
                        day.2 + e.cost_micros.unwrap_or(0),
                    );
                }
                insert
                    .execute(params![
                        env,
                        e.event_id,
                        e.at_ms,
                        e.user_id,
                        e.event,
                        e.quantity,
                        e.metadata,
                        e.cost_micros,
                        e.status,
                        e.plan_id,
                        e.reasons,
                    ])
                    .map_err(internal)?;
            }
            let mut add = tx
                .prepare_cached(crate::sql::ROLLUP_ADD)
                .map_err(internal)?;
            for ((day, user, plan), (n, q, c)) in days {
                add.execute(params![env, day, user, plan, n, q, c])
                    .map_err(internal)?;
            }
        }
        tx.commit().map_err(internal)?;
        // The writer's connection never checkpoints by itself (the server's checkpointer does):
        // copy each batch back so the WAL stays one batch long.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(internal)?;
        written += rows;
        progress(written);
    }
    Ok(())
}
