//! Bulk-loads synthetic usage events into a data dir, for benchmarks only
//! (`tollgate bench --seed-events`): how the hot path's cost grows with the events already
//! stored can only be measured on a database that holds many.
//!
//! The rows go straight into the `events` table of the install's test environment, in large
//! transactions with `synchronous=OFF` (a crash mid-load loses only bench data). They are
//! committed usage of past days; counters are not touched, so no quota is used up.

use crate::{internal, open_writer, DATABASE_FILE};
use rusqlite::{params, OptionalExtension};
use std::path::Path;
use tollgate_store::{StoreError, StoreResult};

/// Rows per transaction.
const SEED_BATCH_ROWS: u64 = 200_000;
/// The seeded events spread over this many days before now.
const SEED_DAYS: i64 = 30;
/// Page cache of the loading connection, in KiB: the user-time index stays in memory.
const SEED_CACHE_KIB: i64 = 1024 * 1024;

/// Appends `events` committed events spread over `users` users (`seed_u<n>`) and the last
/// [`SEED_DAYS`] days, calling `progress` with the rows written so far after each transaction.
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
    let conn = open_writer(&data_dir.join(DATABASE_FILE)).map_err(internal)?;
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
    let span_ms = SEED_DAYS * 86_400_000;
    let mut written = 0;
    // A cheap deterministic spread of users (SplitMix64), so two loads are alike.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    while written < events {
        let rows = SEED_BATCH_ROWS.min(events - written);
        let tx = conn.unchecked_transaction().map_err(internal)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (env_id, event_id, occurred_at_ms, user_id, event,
                         quantity, metadata, status, plan_id, reasons)
                     VALUES (?1, ?2, ?3, ?4, 'seed.op', 1, '{}', 'committed', 'bench', '[]')",
                )
                .map_err(internal)?;
            for i in written..written + rows {
                // Times rise with the row number, as a real log's do.
                let at = now_ms - span_ms + (i as i64).saturating_mul(span_ms) / events as i64;
                let user = next() % users;
                insert
                    .execute(params![
                        env,
                        format!("evt_seed{i:016}"),
                        at,
                        format!("seed_u{user}")
                    ])
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
