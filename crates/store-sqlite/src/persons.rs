//! Persons on SQLite (see `tollgate_store::persons`): the `persons` table of traits, and the
//! statements that clear logged prompts and responses, for an erased user or past retention.
//! Each clears at most a batch of rows, found through the partial indexes of migration 15 that
//! hold only rows with logged text, so a step never walks rows it has nothing to do with.

use crate::{internal, ms};
use jiff::{SignedDuration, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};
use tollgate_store::{EnvId, LoggedTextCleared, StoreResult};

pub(crate) fn traits(c: &Connection, env: EnvId, user_id: &str) -> StoreResult<Option<String>> {
    c.prepare_cached("SELECT traits FROM persons WHERE env_id = ?1 AND user_id = ?2")
        .and_then(|mut st| {
            st.query_row(params![env.0, user_id], |r| r.get(0))
                .optional()
        })
        .map_err(internal)
}

pub(crate) fn put_traits(
    c: &Connection,
    env: EnvId,
    user_id: &str,
    traits: &str,
    now: Timestamp,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO persons (env_id, user_id, traits, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (env_id, user_id) DO UPDATE SET
             traits = excluded.traits, updated_at_ms = excluded.updated_at_ms",
    )
    .and_then(|mut st| st.execute(params![env.0, user_id, traits, ms(now)]))
    .map(|_| ())
    .map_err(internal)
}

pub(crate) fn delete_traits(
    c: &Connection,
    env: EnvId,
    user_id: &str,
) -> StoreResult<Option<String>> {
    c.prepare_cached("DELETE FROM persons WHERE env_id = ?1 AND user_id = ?2 RETURNING traits")
        .and_then(|mut st| {
            st.query_row(params![env.0, user_id], |r| r.get(0))
                .optional()
        })
        .map_err(internal)
}

/// Clears the logged text of at most `limit` of the user's events, then of their reservations
/// with what is left of `limit`.
pub(crate) fn erase_logged_text(
    c: &Connection,
    env: EnvId,
    user_id: &str,
    limit: usize,
) -> StoreResult<LoggedTextCleared> {
    let mut cleared = LoggedTextCleared::default();
    let events: Vec<(i64, bool, bool)> = c
        .prepare_cached(
            "SELECT rowid, prompt IS NOT NULL, response IS NOT NULL FROM events
             WHERE env_id = ?1 AND user_id = ?2 AND (prompt IS NOT NULL OR response IS NOT NULL)
             LIMIT ?3",
        )
        .and_then(|mut st| {
            st.query_map(params![env.0, user_id, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    for (rowid, prompt, response) in events {
        clear_event(c, rowid)?;
        cleared.prompts += u64::from(prompt);
        cleared.responses += u64::from(response);
        cleared.rows += 1;
    }
    let room = limit.saturating_sub(cleared.rows);
    if room == 0 {
        return Ok(cleared);
    }
    // A pending or expired reservation's prompt is on no event (an expiry's event carries
    // none): it counts. A settled one's is a copy of its event's, counted there.
    let reservations: Vec<(i64, bool)> = c
        .prepare_cached(
            "SELECT rowid, status = 'pending' OR status = 'expired' FROM reservations
             WHERE env_id = ?1 AND user_id = ?2 AND prompt IS NOT NULL LIMIT ?3",
        )
        .and_then(|mut st| {
            st.query_map(params![env.0, user_id, room as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    for (rowid, own) in reservations {
        c.prepare_cached(
            "UPDATE reservations SET prompt = NULL, prompt_truncated = 0 WHERE rowid = ?1",
        )
        .and_then(|mut st| st.execute(params![rowid]))
        .map_err(internal)?;
        cleared.prompts += u64::from(own);
        cleared.rows += 1;
    }
    Ok(cleared)
}

fn clear_event(c: &Connection, rowid: i64) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE events SET prompt = NULL, response = NULL, truncated = 0 WHERE rowid = ?1",
    )
    .and_then(|mut st| st.execute(params![rowid]))
    .map(|_| ())
    .map_err(internal)
}

/// One step of the retention purge of `env`: events first, then reservations with what is
/// left of `limit`. "Older than retention" is measured on the environment's clock.
pub(crate) fn purge_logged_text(
    c: &Connection,
    env: EnvId,
    retention: SignedDuration,
    real_now: Timestamp,
    limit: usize,
) -> StoreResult<usize> {
    // Before the environment's clock offset is added.
    let before = ms(real_now).saturating_sub(retention.as_millis() as i64);
    let events = c
        .prepare_cached(
            "UPDATE events SET prompt = NULL, response = NULL, truncated = 0
             WHERE rowid IN (
                 SELECT rowid FROM events
                 WHERE env_id = ?1 AND (prompt IS NOT NULL OR response IS NOT NULL)
                     AND occurred_at_ms < ?2 + (SELECT clock_offset_s * 1000 FROM environments
                                                WHERE env_id = ?1)
                 LIMIT ?3)",
        )
        .and_then(|mut st| st.execute(params![env.0, before, limit as i64]))
        .map_err(internal)?;
    let room = limit.saturating_sub(events);
    if room == 0 {
        return Ok(events);
    }
    let reservations = c
        .prepare_cached(
            "UPDATE reservations SET prompt = NULL, prompt_truncated = 0
             WHERE rowid IN (
                 SELECT rowid FROM reservations
                 WHERE env_id = ?1 AND prompt IS NOT NULL
                     AND created_at_ms < ?2 + (SELECT clock_offset_s * 1000 FROM environments
                                               WHERE env_id = ?1)
                 LIMIT ?3)",
        )
        .and_then(|mut st| st.execute(params![env.0, before, room as i64]))
        .map_err(internal)?;
    Ok(events + reservations)
}

pub(crate) fn environments(c: &Connection) -> StoreResult<Vec<EnvId>> {
    c.prepare_cached("SELECT env_id FROM environments ORDER BY env_id")
        .and_then(|mut st| st.query_map([], |r| Ok(EnvId(r.get(0)?)))?.collect())
        .map_err(internal)
}
