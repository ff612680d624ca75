//! Bulk-loads synthetic usage events ([`tollgate_store::seed`]) into a PostgreSQL database,
//! for benchmarks only (`tollgate seed-events --database-url …`): the same rows the SQLite
//! seeder writes, through `COPY`, into the test environment of the database's install.

use crate::pool::pg_error;
use std::io::Write;
use tollgate_store::seed::seed_event;
use tollgate_store::{StoreError, StoreResult};

/// Rows per `COPY` (one transaction each).
const SEED_BATCH_ROWS: u64 = 200_000;

/// Appends `events` synthetic events over `users` users to the install's test environment,
/// calling `progress` with the rows written so far after each batch.
pub fn seed_events(
    url: &str,
    events: u64,
    users: u64,
    mut progress: impl FnMut(u64),
) -> StoreResult<()> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to the database: {e}")))?;
    let env: Option<i64> = client
        .query_opt(
            "SELECT env_id FROM environments WHERE mode = 'test' ORDER BY env_id LIMIT 1",
            &[],
        )
        .map_err(|e| pg_error(&e))?
        .map(|r| r.get(0));
    let Some(env) = env else {
        return Err(StoreError::Internal(
            "no test environment to seed; run `tollgate init` first".into(),
        ));
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let mut written = 0;
    while written < events {
        let rows = SEED_BATCH_ROWS.min(events - written);
        let mut tx = client.transaction().map_err(|e| pg_error(&e))?;
        let mut sink = tx
            .copy_in(
                "COPY events (env_id, event_id, occurred_at_ms, user_id, event, quantity,
                              metadata, cost_micros, status, plan_id, reasons)
                 FROM STDIN",
            )
            .map_err(|e| pg_error(&e))?;
        let mut line = String::with_capacity(256);
        for i in written..written + rows {
            let e = seed_event(i, events, users, now_ms);
            let cost = e.cost_micros.map_or("\\N".to_string(), |c| c.to_string());
            // Text format: tab-separated; no seeded value holds a tab, newline or backslash.
            line.clear();
            line.push_str(&format!(
                "{env}\t{}\t{}\t{}\t{}\t{}\t{}\t{cost}\t{}\t{}\t{}\n",
                e.event_id,
                e.at_ms,
                e.user_id,
                e.event,
                e.quantity,
                e.metadata,
                e.status,
                e.plan_id,
                e.reasons
            ));
            sink.write_all(line.as_bytes())
                .map_err(|e| StoreError::Internal(format!("writing to COPY: {e}")))?;
        }
        sink.finish().map_err(|e| pg_error(&e))?;
        // The batch's daily rollup, as recording each event would have kept it.
        let (first, last) = (
            seed_event(written, events, users, now_ms).event_id,
            seed_event(written + rows - 1, events, users, now_ms).event_id,
        );
        tx.execute(
            "INSERT INTO usage_daily AS d (env_id, day_ms, user_id, plan_id, events, quantity,
                                          cost_micros)
             SELECT env_id, occurred_at_ms - occurred_at_ms % 86400000, user_id,
                    COALESCE(plan_id, ''), COUNT(*), SUM(quantity), SUM(COALESCE(cost_micros, 0))
               FROM events
              WHERE env_id = $1 AND event_id BETWEEN $2 AND $3
                AND status IN ('committed', 'tracked')
              GROUP BY 1, 2, 3, 4
             ON CONFLICT (env_id, day_ms, user_id, plan_id) DO UPDATE SET
                events = d.events + EXCLUDED.events,
                quantity = d.quantity + EXCLUDED.quantity,
                cost_micros = d.cost_micros + EXCLUDED.cost_micros",
            &[&env, &first, &last],
        )
        .map_err(|e| pg_error(&e))?;
        tx.commit().map_err(|e| pg_error(&e))?;
        written += rows;
        progress(written);
    }
    client
        .batch_execute("ANALYZE events; ANALYZE usage_daily")
        .map_err(|e| pg_error(&e))?;
    Ok(())
}
