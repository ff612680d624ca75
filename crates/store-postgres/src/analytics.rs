//! The analytics reads on PostgreSQL (API.md §9): usage events grouped and summed, captured
//! product events, and a funnel's step occurrences.
//!
//! An analytics statement is assembled from fixed fragments, one per dimension asked for; every
//! value is a bound parameter. Time buckets are `width_bucket` over the bounds the server
//! computed, so both backends bucket alike.

use crate::sql::{ms, ts, PgTx};
use postgres::types::ToSql;
use std::collections::HashMap;
use tollgate_store::{
    AnalyticsQuery, AnalyticsRow, CaptureCommand, Dimension, EnvId, FunnelQuery, Metric,
    Occurrence, RevenueSource, RollupPlan, StoreError, StoreResult,
};

fn dimension(d: &Dimension, n: usize) -> String {
    match d {
        Dimension::UserId => "e.user_id".into(),
        Dimension::AccountId => "e.account_id".into(),
        Dimension::Event => "e.event".into(),
        Dimension::PlanId => "e.plan_id".into(),
        Dimension::Status => "e.status".into(),
        Dimension::Metadata(_) => format!("(e.metadata ->> ${n}::text)"),
    }
}

/// A sum as the exact integer it is, or the error a sum beyond `i64` earns.
fn sum(text: Option<String>) -> StoreResult<u64> {
    let Some(text) = text else { return Ok(0) };
    text.parse::<i64>()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| StoreError::Invalid {
            field: "from".into(),
            message: "a sum is beyond 2^63 - 1: narrow the range or the filters".into(),
        })
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
/// cancel out had none in the range and is left out. JIT is off for it: compiling the plan
/// cost more (about 90 ms) than it saved.
fn rolled(
    tx: &mut PgTx<'_, '_>,
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
        .chain(["SUM(n)::bigint, SUM(q)::text, SUM(c)::text, 0::bigint"])
        .collect::<Vec<_>>()
        .join(", ");
    let group_by = group_by_clause(groups, true);
    let order = match q.order_by {
        None => String::new(),
        Some(m) => {
            let metric = match m {
                Metric::Events => "SUM(n)",
                Metric::Quantity => "SUM(q)",
                Metric::CostMicros | Metric::Users => "SUM(c)",
            };
            let ties: String = (columns.iter())
                .map(|c| format!(", {c} COLLATE \"C\""))
                .collect();
            format!("ORDER BY {metric} DESC{ties}")
        }
    };
    let edge = |sign: &str, start: usize| {
        format!(
            "SELECT user_id, COALESCE(plan_id, '') AS plan_id, {sign}1::bigint AS n,
                    {sign}quantity AS q, {sign}COALESCE(cost_micros, 0) AS c
               FROM events
              WHERE env_id = $1 AND status IN ('committed', 'tracked')
                AND occurred_at_ms >= ${start} AND occurred_at_ms < ${}",
            start + 1
        )
    };
    let sql = format!(
        "SELECT {select} FROM (
            SELECT user_id, plan_id, events AS n, quantity AS q, cost_micros AS c
              FROM usage_daily WHERE env_id = $1 AND day_ms >= $2 AND day_ms < $3
            UNION ALL {} UNION ALL {} UNION ALL {} UNION ALL {}
         ) AS parts {group_by} {order} LIMIT $12",
        edge("", 4),
        edge("", 6),
        edge("-", 8),
        edge("-", 10),
    );
    tx.query_assembled("SET LOCAL jit = off", &[])?;
    let [a0, a1] = plan.add;
    let [s0, s1] = plan.subtract;
    let rows = tx.query_assembled(
        &sql,
        &[
            &q.env.0,
            &plan.days.0,
            &plan.days.1,
            &a0.0,
            &a0.1,
            &a1.0,
            &a1.1,
            &s0.0,
            &s0.1,
            &s1.0,
            &s1.1,
            &(q.limit as i64),
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(AnalyticsRow {
            keys: (0..groups).map(|i| r.get::<_, Option<String>>(i)).collect(),
            bucket: None,
            events: r.get::<_, Option<i64>>(groups).unwrap_or(0) as u64,
            quantity: sum(r.get(groups + 1))?,
            cost_micros: sum(r.get(groups + 2))?,
            users: 0,
        });
    }
    Ok(out)
}

pub(crate) fn analytics(
    tx: &mut PgTx<'_, '_>,
    q: &AnalyticsQuery,
) -> StoreResult<Vec<AnalyticsRow>> {
    if let Some(plan) = q.rollup_plan(q.now) {
        return rolled(tx, q, plan);
    }
    let mut values: Vec<Box<dyn ToSql + Sync>> = vec![
        Box::new(q.env.0),
        Box::new(ms(q.from)),
        Box::new(ms(q.to)),
        Box::new(
            q.event
                .as_ref()
                .map(|e| crate::sql::like_pattern(e.as_str())),
        ),
        Box::new(q.statuses.clone()),
    ];
    let mut bind = |v: Box<dyn ToSql + Sync>| {
        values.push(v);
        values.len()
    };
    let mut wheres = vec![
        "e.env_id = $1".to_string(),
        "e.occurred_at_ms >= $2 AND e.occurred_at_ms < $3".to_string(),
        "($4::text IS NULL OR e.event LIKE $4 ESCAPE '\\')".to_string(),
        "e.status = ANY($5::text[])".to_string(),
    ];
    if let Some(user) = &q.user_id {
        let n = bind(Box::new(user.clone()));
        wheres.push(format!("e.user_id = ${n}"));
    }
    if let Some(account) = &q.account_id {
        let n = bind(Box::new(account.clone()));
        wheres.push(format!("e.account_id = ${n}"));
    }
    for (key, wanted) in &q.metadata {
        let k = bind(Box::new(key.clone()));
        let v = bind(Box::new(wanted.clone()));
        wheres.push(format!("(e.metadata ->> ${k}::text) = ANY(${v}::text[])"));
    }
    let mut columns = Vec::new();
    if let Some(bounds) = &q.buckets {
        let n = bind(Box::new(bounds.clone()));
        columns.push(format!(
            "width_bucket(e.occurred_at_ms, ${n}::bigint[]) - 1"
        ));
    }
    for d in &q.group_by {
        let n = match d {
            Dimension::Metadata(key) => bind(Box::new(key.clone())),
            _ => 0,
        };
        columns.push(dimension(d, n));
    }
    let groups = columns.len();
    let users = if q.count_users || q.order_by == Some(Metric::Users) {
        "COUNT(DISTINCT e.user_id)"
    } else {
        "0::bigint"
    };
    let metrics =
        format!("COUNT(*), SUM(e.quantity)::text, SUM(COALESCE(e.cost_micros, 0))::text, {users}");
    let select = columns
        .iter()
        .cloned()
        .chain([metrics])
        .collect::<Vec<_>>()
        .join(", ");
    let group_by = group_by_clause(groups, false);
    let order = match q.order_by {
        None => String::new(),
        Some(m) => {
            // Sums are compared as numbers, ties in byte order (as SQLite does).
            let metric = match m {
                Metric::Events => "COUNT(*)",
                Metric::Quantity => "SUM(e.quantity)",
                Metric::CostMicros => "SUM(COALESCE(e.cost_micros, 0))",
                Metric::Users => "COUNT(DISTINCT e.user_id)",
            };
            let bucket = usize::from(q.buckets.is_some());
            let ties: Vec<String> = (columns.iter().enumerate())
                .map(|(i, c)| match i < bucket {
                    true => c.clone(),
                    false => format!("{c} COLLATE \"C\""),
                })
                .collect();
            let ties = if ties.is_empty() {
                String::new()
            } else {
                format!(", {}", ties.join(", "))
            };
            format!("ORDER BY {metric} DESC{ties}")
        }
    };
    let limit = bind(Box::new(q.limit as i64));
    let sql = format!(
        "SELECT {select} FROM events AS e WHERE {} {group_by} {order} LIMIT ${limit}",
        wheres.join(" AND ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
    let rows = tx.query_assembled(&sql, &params)?;
    let bucketed = q.buckets.is_some();
    let dims = q.group_by.len();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let at = usize::from(bucketed);
        let bucket = bucketed.then(|| r.get::<_, i32>(0) as usize);
        let keys = (0..dims)
            .map(|i| r.get::<_, Option<String>>(at + i))
            .collect();
        let m = at + dims;
        out.push(AnalyticsRow {
            keys,
            bucket,
            events: r.get::<_, i64>(m) as u64,
            quantity: sum(r.get(m + 1))?,
            cost_micros: sum(r.get(m + 2))?,
            users: r.get::<_, i64>(m + 3) as u64,
        });
    }
    Ok(out)
}

pub(crate) fn insert_capture(tx: &mut PgTx<'_, '_>, c: &CaptureCommand) -> StoreResult<()> {
    let properties: serde_json::Value =
        serde_json::from_str(&c.properties).unwrap_or(serde_json::Value::Null);
    tx.execute(
        "INSERT INTO captures (env_id, capture_id, subject, event, properties, occurred_at_ms,
                               received_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &c.env.0,
            &c.capture_id,
            &c.subject,
            &c.event,
            &properties,
            &ms(c.occurred_at),
            &ms(c.received_at),
        ],
    )?;
    Ok(())
}

/// Captured product events (an identified anonymous id counts as its user) and committed or
/// tracked usage events whose name is one of the steps', in `[from, to)`.
pub(crate) fn funnel_occurrences(
    tx: &mut PgTx<'_, '_>,
    q: &FunnelQuery,
) -> StoreResult<Vec<Occurrence>> {
    let rows = tx.query(
        "SELECT COALESCE(a.user_id, c.subject), c.event, c.occurred_at_ms
           FROM captures AS c
           LEFT JOIN aliases AS a ON a.env_id = c.env_id AND a.anonymous_id = c.subject
          WHERE c.env_id = $1 AND c.event = ANY($2::text[])
            AND c.occurred_at_ms >= $3 AND c.occurred_at_ms < $4
         UNION ALL
         SELECT e.user_id, e.event, e.occurred_at_ms FROM events AS e
          WHERE e.env_id = $1 AND e.occurred_at_ms >= $3 AND e.occurred_at_ms < $4
            AND e.status IN ('committed', 'tracked') AND e.event = ANY($2::text[])
         LIMIT $5",
        &[
            &q.env.0,
            &q.events,
            &ms(q.from),
            &ms(q.to),
            &(q.limit as i64),
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| Occurrence {
            user_id: r.get(0),
            event: r.get(1),
            at_ms: r.get(2),
        })
        .collect())
}

/// Every subscription of an environment with the history entries that start or end a plan.
pub(crate) fn revenue_sources(
    tx: &mut PgTx<'_, '_>,
    env: EnvId,
    limit: usize,
) -> StoreResult<Vec<RevenueSource>> {
    let rows = tx.query(
        "SELECT subject, plan_id, cycle_start_ms, ends_at_ms, created_at_ms
           FROM subscriptions WHERE env_id = $1 ORDER BY subject COLLATE \"C\" LIMIT $2",
        &[&env.0, &(limit as i64)],
    )?;
    let mut out: Vec<RevenueSource> = rows
        .iter()
        .map(|r| RevenueSource {
            subject: r.get(0),
            plan_id: r.get(1),
            cycle_start: ts(r.get(2)),
            ends_at: r.get::<_, Option<i64>>(3).map(ts),
            created_at: ts(r.get(4)),
            history: Vec::new(),
        })
        .collect();
    let at: HashMap<String, usize> = (out.iter().enumerate())
        .map(|(i, s)| (s.subject.clone(), i))
        .collect();
    let rows = tx.query(
        "SELECT subject, kind, at_ms, to_plan_id FROM subscription_history
          WHERE env_id = $1 AND kind IN ('created', 'plan_changed', 'reactivated', 'ended')
          ORDER BY seq",
        &[&env.0],
    )?;
    for r in rows {
        let subject: String = r.get(0);
        if let Some(&i) = at.get(&subject) {
            out[i].history.push((r.get(1), ts(r.get(2)), r.get(3)));
        }
    }
    Ok(out)
}
