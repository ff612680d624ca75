//! The analytics reads on SQLite (API.md §9): usage events grouped and summed, captured product
//! events, and a funnel's step occurrences.
//!
//! An analytics statement is assembled from fixed fragments, one per dimension asked for; every
//! value (ids, statuses, metadata keys and values, bucket bounds) is a bound parameter. With
//! time buckets the bucket list drives the join, so each bucket is one range scan of an index
//! on time (`events_user_time` with a user filter, `events_time` without).

use crate::{internal, ms, ts};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};
use std::collections::HashMap;
use tollgate_store::{
    AnalyticsQuery, AnalyticsRow, CaptureCommand, Dimension, EnvId, FunnelQuery, Metric,
    Occurrence, RevenueSource, RollupPlan, StoreError, StoreResult,
};

/// The column a dimension reads; a metadata key is the bound parameter `?{n}`.
fn dimension(d: &Dimension, n: usize) -> String {
    match d {
        Dimension::UserId => "e.user_id".into(),
        Dimension::AccountId => "e.account_id".into(),
        Dimension::Event => "e.event".into(),
        Dimension::PlanId => "e.plan_id".into(),
        Dimension::Status => "e.status".into(),
        Dimension::Metadata(_) => format!("json_extract(e.metadata, ?{n})"),
    }
}

/// A metadata key as a JSON path. Keys are `[A-Za-z0-9_.:-]`: quoting needs no escape.
fn json_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

fn sum_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(_, Some(m)) if m.contains("integer overflow") => {
            StoreError::Invalid {
                field: "from".into(),
                message: "a sum is beyond 2^63 - 1: narrow the range or the filters".into(),
            }
        }
        _ => internal(e),
    }
}

/// `ORDER BY` for a query sorted by a metric (largest first, ties by the group columns), or
/// nothing: `groups` columns come first in the select list, then the four metrics.
fn order_clause(q: &AnalyticsQuery, groups: usize) -> String {
    let Some(m) = q.order_by else {
        return String::new();
    };
    let position = groups
        + match m {
            Metric::Events => 1,
            Metric::Quantity => 2,
            Metric::CostMicros => 3,
            Metric::Users => 4,
        };
    let ties: Vec<String> = (1..=groups).map(|i| i.to_string()).collect();
    let ties = if ties.is_empty() {
        String::new()
    } else {
        format!(", {}", ties.join(", "))
    };
    format!("ORDER BY {position} DESC{ties}")
}

/// `GROUP BY` the first `groups` select columns (nothing without groups); `having_events`
/// leaves out groups with no event (the rollup's sums, where events may cancel out).
fn group_by_clause(groups: usize, having_events: bool) -> String {
    if groups == 0 {
        return String::new();
    }
    let positions: Vec<String> = (1..=groups).map(|i| i.to_string()).collect();
    let having = if having_events {
        " HAVING SUM(n) > 0"
    } else {
        ""
    };
    format!("GROUP BY {}{having}", positions.join(", "))
}

/// [`analytics`] through the daily rollup ([`RollupPlan`]): its whole days, plus the events of
/// the plan's `add` ranges, minus those of its `subtract` ranges. A group whose events all
/// cancel out had none in the range and is left out.
fn rolled(
    conn: &Connection,
    q: &AnalyticsQuery,
    plan: RollupPlan,
) -> StoreResult<Vec<AnalyticsRow>> {
    let columns: Vec<&str> = (q.group_by.iter())
        .map(|d| match d {
            Dimension::PlanId => "NULLIF(plan_id, '')",
            _ => "user_id",
        })
        .collect();
    let groups = columns.len();
    let select = columns
        .iter()
        .copied()
        .chain(["SUM(n), SUM(q), SUM(c), 0"])
        .collect::<Vec<_>>()
        .join(", ");
    let group_by = group_by_clause(groups, true);
    let edge = |sign: &str, start: usize| {
        format!(
            "SELECT user_id, COALESCE(plan_id, '') AS plan_id, {sign}1 AS n,
                    {sign}quantity AS q, {sign}COALESCE(cost_micros, 0) AS c
               FROM events
              WHERE env_id = ?1 AND status IN ('committed', 'tracked')
                AND occurred_at_ms >= ?{start} AND occurred_at_ms < ?{}",
            start + 1
        )
    };
    let sql = format!(
        "SELECT {select} FROM (
            SELECT user_id, plan_id, events AS n, quantity AS q, cost_micros AS c
              FROM usage_daily WHERE env_id = ?1 AND day_ms >= ?2 AND day_ms < ?3
            UNION ALL {} UNION ALL {} UNION ALL {} UNION ALL {}
         ) {group_by} {order} LIMIT ?12",
        edge("", 4),
        edge("", 6),
        edge("-", 8),
        edge("-", 10),
        order = order_clause(q, groups)
    );
    let mut st = conn.prepare_cached(&sql).map_err(internal)?;
    let [a0, a1] = plan.add;
    let [s0, s1] = plan.subtract;
    let rows = st
        .query_map(
            params![
                q.env.0,
                plan.days.0,
                plan.days.1,
                a0.0,
                a0.1,
                a1.0,
                a1.1,
                s0.0,
                s0.1,
                s1.0,
                s1.1,
                q.limit as i64
            ],
            |r| {
                let mut keys = Vec::with_capacity(groups);
                for i in 0..groups {
                    keys.push(r.get::<_, Option<String>>(i)?);
                }
                Ok(AnalyticsRow {
                    keys,
                    bucket: None,
                    events: r.get::<_, Option<i64>>(groups)?.unwrap_or(0) as u64,
                    quantity: r.get::<_, Option<i64>>(groups + 1)?.unwrap_or(0) as u64,
                    cost_micros: r.get::<_, Option<i64>>(groups + 2)?.unwrap_or(0) as u64,
                    users: 0,
                })
            },
        )
        .map_err(sum_error)?;
    rows.collect::<Result<_, _>>().map_err(sum_error)
}

pub(crate) fn analytics(conn: &Connection, q: &AnalyticsQuery) -> StoreResult<Vec<AnalyticsRow>> {
    if let Some(plan) = q.rollup_plan(q.now) {
        return rolled(conn, q, plan);
    }
    let mut values: Vec<Value> = vec![
        Value::Integer(q.env.0),
        Value::Integer(ms(q.from)),
        Value::Integer(ms(q.to)),
        q.event
            .as_ref()
            .map_or(Value::Null, |e| Value::Text(e.as_str().into())),
        Value::Text(serde_json::Value::from(q.statuses.clone()).to_string()),
    ];
    let mut bind = |v: Value| {
        values.push(v);
        values.len()
    };
    let mut wheres = vec![
        "e.env_id = ?1".to_string(),
        "e.occurred_at_ms >= ?2 AND e.occurred_at_ms < ?3".to_string(),
        "(?4 IS NULL OR e.event GLOB ?4)".to_string(),
        "e.status IN (SELECT value FROM json_each(?5))".to_string(),
    ];
    if let Some(user) = &q.user_id {
        let n = bind(Value::Text(user.clone()));
        wheres.push(format!("e.user_id = ?{n}"));
    }
    if let Some(account) = &q.account_id {
        let n = bind(Value::Text(account.clone()));
        wheres.push(format!("e.account_id = ?{n}"));
    }
    for (key, wanted) in &q.metadata {
        let k = bind(Value::Text(json_path(key)));
        let v = bind(Value::Text(
            serde_json::Value::from(wanted.clone()).to_string(),
        ));
        wheres.push(format!(
            "json_extract(e.metadata, ?{k}) IN (SELECT value FROM json_each(?{v}))"
        ));
    }
    let mut columns = Vec::new();
    let mut from = "events AS e".to_string();
    if let Some(bounds) = &q.buckets {
        let pairs: Vec<[i64; 2]> = bounds.windows(2).map(|w| [w[0], w[1]]).collect();
        let n = bind(Value::Text(
            serde_json::to_string(&pairs).unwrap_or_default(),
        ));
        from = format!(
            "json_each(?{n}) AS b JOIN events AS e
               ON e.occurred_at_ms >= json_extract(b.value, '$[0]')
              AND e.occurred_at_ms < json_extract(b.value, '$[1]')"
        );
        columns.push("b.key".to_string());
    }
    for d in &q.group_by {
        let n = match d {
            Dimension::Metadata(key) => bind(Value::Text(json_path(key))),
            _ => 0,
        };
        columns.push(dimension(d, n));
    }
    let groups = columns.len();
    let users = match q.order_by {
        Some(Metric::Users) => true,
        _ => q.count_users,
    };
    let users = if users {
        "COUNT(DISTINCT e.user_id)"
    } else {
        "0"
    };
    let metrics = format!("COUNT(*), SUM(e.quantity), SUM(COALESCE(e.cost_micros, 0)), {users}");
    let select = columns
        .iter()
        .cloned()
        .chain([metrics])
        .collect::<Vec<_>>()
        .join(", ");
    let group_by = group_by_clause(groups, false);
    let order = order_clause(q, groups);
    let limit = bind(Value::Integer(q.limit as i64));
    let sql = format!(
        "SELECT {select} FROM {from} WHERE {} {group_by} {order} LIMIT ?{limit}",
        wheres.join(" AND ")
    );
    let mut st = conn.prepare(&sql).map_err(internal)?;
    let bucketed = q.buckets.is_some();
    let dims = q.group_by.len();
    let rows = st
        .query_map(params_from_iter(values.iter()), |r| {
            let mut at = 0;
            let bucket = if bucketed {
                at = 1;
                Some(r.get::<_, i64>(0)?)
            } else {
                None
            };
            let mut keys = Vec::with_capacity(dims);
            for i in 0..dims {
                keys.push(text_of(r.get::<_, Value>(at + i)?));
            }
            let m = at + dims;
            Ok((
                keys,
                bucket,
                [
                    r.get::<_, i64>(m)?,
                    r.get::<_, Option<i64>>(m + 1)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(m + 2)?.unwrap_or(0),
                    r.get::<_, i64>(m + 3)?,
                ],
            ))
        })
        .map_err(sum_error)?;
    let mut out = Vec::new();
    for row in rows {
        let (keys, bucket, [events, quantity, cost, users]) = row.map_err(sum_error)?;
        out.push(AnalyticsRow {
            keys,
            bucket: bucket.map(|b| b as usize),
            events: events as u64,
            quantity: quantity as u64,
            cost_micros: cost as u64,
            users: users as u64,
        });
    }
    Ok(out)
}

/// A grouped value as text: metadata values are strings, every other dimension a text column.
fn text_of(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s),
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
    }
}

pub(crate) fn insert_capture(conn: &Connection, c: &CaptureCommand) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO captures (env_id, capture_id, subject, event, properties, occurred_at_ms,
                               received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            c.env.0,
            c.capture_id,
            c.subject,
            c.event,
            c.properties,
            ms(c.occurred_at),
            ms(c.received_at),
        ])
    })
    .map_err(internal)?;
    Ok(())
}

/// Captured product events (an identified anonymous id counts as its user) and committed or
/// tracked usage events whose name is one of the steps', in `[from, to)`.
pub(crate) fn funnel_occurrences(
    conn: &Connection,
    q: &FunnelQuery,
) -> StoreResult<Vec<Occurrence>> {
    let mut st = conn
        .prepare_cached(
            "SELECT COALESCE(a.user_id, c.subject), c.event, c.occurred_at_ms
               FROM captures AS c
               LEFT JOIN aliases AS a ON a.env_id = c.env_id AND a.anonymous_id = c.subject
              WHERE c.env_id = ?1 AND c.event IN (SELECT value FROM json_each(?2))
                AND c.occurred_at_ms >= ?3 AND c.occurred_at_ms < ?4
             UNION ALL
             SELECT e.user_id, e.event, e.occurred_at_ms FROM events AS e
              WHERE e.env_id = ?1 AND e.occurred_at_ms >= ?3 AND e.occurred_at_ms < ?4
                AND e.status IN ('committed', 'tracked')
                AND e.event IN (SELECT value FROM json_each(?2))
             LIMIT ?5",
        )
        .map_err(internal)?;
    let events = serde_json::Value::from(q.events.clone()).to_string();
    let rows = st
        .query_map(
            params![q.env.0, events, ms(q.from), ms(q.to), q.limit as i64],
            |r| {
                Ok(Occurrence {
                    user_id: r.get(0)?,
                    event: r.get(1)?,
                    at_ms: r.get(2)?,
                })
            },
        )
        .map_err(internal)?;
    rows.collect::<Result<_, _>>().map_err(internal)
}

/// Every subscription of an environment with the history entries that start or end a plan.
pub(crate) fn revenue_sources(
    conn: &Connection,
    env: EnvId,
    limit: usize,
) -> StoreResult<Vec<RevenueSource>> {
    let mut st = conn
        .prepare_cached(
            "SELECT subject, plan_id, cycle_start_ms, ends_at_ms, created_at_ms
               FROM subscriptions WHERE env_id = ?1 ORDER BY subject LIMIT ?2",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![env.0, limit as i64], |r| {
            Ok(RevenueSource {
                subject: r.get(0)?,
                plan_id: r.get(1)?,
                cycle_start: ts(r.get(2)?),
                ends_at: r.get::<_, Option<i64>>(3)?.map(ts),
                created_at: ts(r.get(4)?),
                history: Vec::new(),
            })
        })
        .map_err(internal)?;
    let mut out: Vec<RevenueSource> = rows.collect::<Result<_, _>>().map_err(internal)?;
    let at: HashMap<String, usize> = (out.iter().enumerate())
        .map(|(i, s)| (s.subject.clone(), i))
        .collect();
    let mut st = conn
        .prepare_cached(
            "SELECT subject, kind, at_ms, to_plan_id FROM subscription_history
              WHERE env_id = ?1 AND kind IN ('created', 'plan_changed', 'reactivated', 'ended')
              ORDER BY seq",
        )
        .map_err(internal)?;
    let mut rows = st.query(params![env.0]).map_err(internal)?;
    while let Some(r) = rows.next().map_err(internal)? {
        let subject: String = r.get(0).map_err(internal)?;
        if let Some(&i) = at.get(&subject) {
            let entry = (
                r.get(1).map_err(internal)?,
                ts(r.get(2).map_err(internal)?),
                r.get(3).map_err(internal)?,
            );
            out[i].history.push(entry);
        }
    }
    Ok(out)
}
