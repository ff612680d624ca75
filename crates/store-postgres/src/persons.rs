//! Persons on PostgreSQL (see `tollgate_store::persons`): the `persons` table of traits, and
//! the statements that clear logged prompts and responses, for an erased user or past
//! retention. Each clears at most a batch of rows, found through the partial indexes of
//! migration 13 that hold only rows with logged text.

use crate::sql::{ms, PgTx};
use jiff::{SignedDuration, Timestamp};
use tollgate_store::{EnvId, LoggedTextCleared, StoreResult};

pub(crate) fn traits(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    user_id: &str,
) -> StoreResult<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT traits::text FROM persons WHERE env_id = $1 AND user_id = $2",
            &[&env.0, &user_id],
        )?
        .map(|r| r.get(0)))
}

pub(crate) fn put_traits(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    user_id: &str,
    traits: &str,
    now: Timestamp,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO persons (env_id, user_id, traits, updated_at_ms)
         VALUES ($1, $2, $3::text::jsonb, $4)
         ON CONFLICT (env_id, user_id) DO UPDATE SET
             traits = excluded.traits, updated_at_ms = excluded.updated_at_ms",
        &[&env.0, &user_id, &traits, &ms(now)],
    )
    .map(|_| ())
}

pub(crate) fn delete_traits(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    user_id: &str,
) -> StoreResult<Option<String>> {
    Ok(tx
        .query_opt(
            "DELETE FROM persons WHERE env_id = $1 AND user_id = $2 RETURNING traits::text",
            &[&env.0, &user_id],
        )?
        .map(|r| r.get(0)))
}

/// Clears the logged text of at most `limit` of the user's events, then of their reservations
/// with what is left of `limit`. The caller holds the user's subject lock.
pub(crate) fn erase_logged_text(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    user_id: &str,
    limit: usize,
) -> StoreResult<LoggedTextCleared> {
    let r = tx.query_one(
        "WITH picked AS (
             SELECT event_id, prompt IS NOT NULL AS p, response IS NOT NULL AS r FROM events
             WHERE env_id = $1 AND user_id = $2 AND (prompt IS NOT NULL OR response IS NOT NULL)
             LIMIT $3 FOR UPDATE),
         cleared AS (
             UPDATE events e SET prompt = NULL, response = NULL, truncated = FALSE
             FROM picked WHERE e.env_id = $1 AND e.event_id = picked.event_id
             RETURNING picked.p, picked.r)
         SELECT COUNT(*) FILTER (WHERE p), COUNT(*) FILTER (WHERE r), COUNT(*) FROM cleared",
        &[&env.0, &user_id, &(limit as i64)],
    )?;
    let mut cleared = LoggedTextCleared {
        prompts: r.get::<_, i64>(0) as u64,
        responses: r.get::<_, i64>(1) as u64,
        rows: r.get::<_, i64>(2) as usize,
    };
    let room = limit.saturating_sub(cleared.rows);
    if room == 0 {
        return Ok(cleared);
    }
    // A pending or expired reservation's prompt is on no event (an expiry's event carries
    // none): it counts. A settled one's is a copy of its event's, counted there.
    let r = tx.query_one(
        "WITH picked AS (
             SELECT reservation_id, status IN ('pending', 'expired') AS own FROM reservations
             WHERE env_id = $1 AND user_id = $2 AND prompt IS NOT NULL
             LIMIT $3 FOR UPDATE),
         cleared AS (
             UPDATE reservations r SET prompt = NULL, prompt_truncated = FALSE
             FROM picked WHERE r.env_id = $1 AND r.reservation_id = picked.reservation_id
             RETURNING picked.own)
         SELECT COUNT(*) FILTER (WHERE own), COUNT(*) FROM cleared",
        &[&env.0, &user_id, &(room as i64)],
    )?;
    cleared.prompts += r.get::<_, i64>(0) as u64;
    cleared.rows += r.get::<_, i64>(1) as usize;
    Ok(cleared)
}

/// One step of the retention purge of `env`: events first, then reservations with what is
/// left of `limit`. "Older than retention" is measured on the environment's clock. Rows
/// another node's purge holds are skipped (it clears them).
pub(crate) fn purge_logged_text(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    retention: SignedDuration,
    real_now: Timestamp,
    limit: usize,
) -> StoreResult<usize> {
    // Before the environment's clock offset is added.
    let before = ms(real_now).saturating_sub(retention.as_millis() as i64);
    let events = tx.execute(
        "WITH due AS (
             SELECT event_id FROM events
             WHERE env_id = $1 AND (prompt IS NOT NULL OR response IS NOT NULL)
                 AND occurred_at_ms < $2 + (SELECT clock_offset_s * 1000 FROM environments
                                            WHERE env_id = $1)
             LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE events e SET prompt = NULL, response = NULL, truncated = FALSE
         FROM due WHERE e.env_id = $1 AND e.event_id = due.event_id",
        &[&env.0, &before, &(limit as i64)],
    )? as usize;
    let room = limit.saturating_sub(events);
    if room == 0 {
        return Ok(events);
    }
    let reservations = tx.execute(
        "WITH due AS (
             SELECT reservation_id FROM reservations
             WHERE env_id = $1 AND prompt IS NOT NULL
                 AND created_at_ms < $2 + (SELECT clock_offset_s * 1000 FROM environments
                                           WHERE env_id = $1)
             LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE reservations r SET prompt = NULL, prompt_truncated = FALSE
         FROM due WHERE r.env_id = $1 AND r.reservation_id = due.reservation_id",
        &[&env.0, &before, &(room as i64)],
    )? as usize;
    Ok(events + reservations)
}

pub(crate) fn environments(tx: &mut PgTx<'_, '_>) -> StoreResult<Vec<EnvId>> {
    Ok(tx
        .query("SELECT env_id FROM environments ORDER BY env_id", &[])?
        .iter()
        .map(|r| EnvId(r.get(0)))
        .collect())
}
