//! Promoting plans from one environment to the other (API.md §12): what a promotion would
//! change, as a list of changes a person can read, and the document it stores.
//!
//! A promotion copies the source environment's whole plan document, with one exception: the
//! biller ids. A Stripe test-mode price is not a live price, so each plan and credit pack keeps
//! the `stripePriceIds` and `polarProductIds` it has in the target (none for one the target
//! lacks); the diff leaves them out for the same reason. Nothing else is touched: limits keep
//! their ids, so the target's counters carry on under the promoted plans.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The fields a promotion keeps from the target: ids of the target's own biller account.
pub const TARGET_OWNED_FIELDS: [&str; 2] = ["stripePriceIds", "polarProductIds"];

/// Arrays whose members are objects with an `id`: compared member by member, by id.
const KEYED_ARRAYS: [&str; 4] = ["plans", "limits", "creditPacks", "items"];

/// One difference between two plan documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanChange {
    /// Where, e.g. `plans[pro].limits[images_daily].quota`.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// The value in the target now (absent for `added`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value the promotion writes (absent for `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// `GET /v1/plans/diff` and `POST /v1/plans/promote`: which environment, at which version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentVersion {
    /// `test` or `live`.
    pub environment: String,
    /// Its plan document version (0: none yet).
    pub version: i64,
}

/// `GET /v1/plans/diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanDiff {
    pub from: EnvironmentVersion,
    pub to: EnvironmentVersion,
    /// What promoting `from` to `to` would change in `to`; empty when nothing would.
    pub changes: Vec<PlanChange>,
}

/// An environment of a project, as a promotion names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentName {
    Test,
    Live,
}

impl EnvironmentName {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentName::Test => "test",
            EnvironmentName::Live => "live",
        }
    }
}

/// `POST /v1/plans/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteRequest {
    pub from: EnvironmentName,
    /// The environment promoted to; the same as `from` changes nothing.
    pub to: EnvironmentName,
    /// Promote only if `from` is still at this version (the one a diff showed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_from_version: Option<i64>,
    /// Promote only if `to` is still at this version (the one a diff showed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_to_version: Option<i64>,
}

/// `POST /v1/plans/promote`: what changed, and the target's new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteResponse {
    pub from: EnvironmentVersion,
    /// The target after the promotion.
    pub to: EnvironmentVersion,
    /// Whether a new version was made (false: the target had this document already).
    pub changed: bool,
    pub changes: Vec<PlanChange>,
}

/// The document a promotion stores in the target: `source` with the target's own biller ids
/// (see the module's documentation).
pub fn promoted_document(source: &Value, target: Option<&Value>) -> Value {
    let mut promoted = source.clone();
    for list in ["plans", "creditPacks"] {
        let Some(members) = promoted.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for member in members {
            let target_member = member
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| find_by_id(target?.get(list)?, id));
            let Some(obj) = member.as_object_mut() else {
                continue;
            };
            for field in TARGET_OWNED_FIELDS {
                match target_member.and_then(|t| t.get(field)) {
                    Some(kept) => obj.insert(field.to_string(), kept.clone()),
                    None => obj.remove(field),
                };
            }
        }
    }
    promoted
}

fn find_by_id<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
}

/// What storing `after` in place of `before` changes, biller ids left out; in document order.
pub fn plan_changes(before: Option<&Value>, after: &Value) -> Vec<PlanChange> {
    let mut changes = Vec::new();
    let empty = Value::Object(Map::new());
    diff("", before.unwrap_or(&empty), after, &mut changes);
    changes
}

fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<PlanChange>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for key in keys {
                if TARGET_OWNED_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (b.get(key), a.get(key)) {
                    (Some(bv), Some(av)) if KEYED_ARRAYS.contains(&key.as_str()) => {
                        diff_keyed(&here, bv, av, out)
                    }
                    (Some(bv), Some(av)) => diff(&here, bv, av, out),
                    (None, Some(av)) => out.push(added(here, av)),
                    (Some(bv), None) => out.push(removed(here, bv)),
                    (None, None) => {}
                }
            }
        }
        _ if before == after => {}
        _ => out.push(PlanChange {
            path: path.to_string(),
            change: "changed".into(),
            from: Some(before.clone()),
            to: Some(after.clone()),
        }),
    }
}

/// Arrays of objects with ids, compared by id; anything else as a whole value.
fn diff_keyed(path: &str, before: &Value, after: &Value, out: &mut Vec<PlanChange>) {
    let ids = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let (Some(before_ids), Some(after_ids)) = (ids(before), ids(after)) else {
        return diff(path, before, after, out);
    };
    for id in &after_ids {
        let here = format!("{path}[{id}]");
        let a = find_by_id(after, id).unwrap_or(&Value::Null);
        match find_by_id(before, id) {
            Some(b) => diff(&here, b, a, out),
            None => out.push(added(here, &without_target_fields(a))),
        }
    }
    for id in before_ids.iter().filter(|id| !after_ids.contains(id)) {
        let b = find_by_id(before, id).unwrap_or(&Value::Null);
        out.push(removed(format!("{path}[{id}]"), &without_target_fields(b)));
    }
    if before_ids
        .iter()
        .filter(|id| after_ids.contains(id))
        .ne(after_ids.iter().filter(|id| before_ids.contains(id)))
    {
        out.push(PlanChange {
            path: format!("{path}.order"),
            change: "changed".into(),
            from: Some(Value::from(before_ids.clone())),
            to: Some(Value::from(after_ids.clone())),
        });
    }
}

fn without_target_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut() {
        for field in TARGET_OWNED_FIELDS {
            obj.remove(field);
        }
    }
    v
}

fn added(path: String, value: &Value) -> PlanChange {
    PlanChange {
        path,
        change: "added".into(),
        from: None,
        to: Some(value.clone()),
    }
}

fn removed(path: String, value: &Value) -> PlanChange {
    PlanChange {
        path,
        change: "removed".into(),
        from: Some(value.clone()),
        to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(quota: u64, extra_plan: bool, price: &str) -> Value {
        let mut plans = vec![
            json!({"id": "free", "name": "Free", "stripePriceIds": [price],
            "limits": [{"id": "images", "quota": quota}, {"id": "chat", "quota": 100}]}),
        ];
        if extra_plan {
            plans.push(
                json!({"id": "pro", "name": "Pro", "stripePriceIds": ["price_test_pro"],
                "limits": []}),
            );
        }
        json!({"defaultPlan": "free", "plans": plans, "creditPacks": []})
    }

    #[test]
    fn promotion_keeps_the_targets_biller_ids_and_drops_the_sources() {
        let source = doc(20, true, "price_test_free");
        let target = doc(10, false, "price_live_free");
        let promoted = promoted_document(&source, Some(&target));
        assert_eq!(
            promoted["plans"][0]["stripePriceIds"],
            json!(["price_live_free"])
        );
        assert_eq!(promoted["plans"][0]["limits"][0]["quota"], 20);
        assert!(promoted["plans"][1].get("stripePriceIds").is_none());
        // Into an environment with no document yet.
        let first = promoted_document(&source, None);
        assert!(first["plans"][0].get("stripePriceIds").is_none());
    }

    #[test]
    fn changes_name_each_path_by_id() {
        let source = doc(20, true, "price_test_free");
        let target = doc(10, false, "price_live_free");
        let promoted = promoted_document(&source, Some(&target));
        let changes = plan_changes(Some(&target), &promoted);
        let paths: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("plans[free].limits[images].quota", "changed"),
                ("plans[pro]", "added"),
            ]
        );
        assert_eq!(changes[0].from, Some(json!(10)));
        assert_eq!(changes[0].to, Some(json!(20)));
        // Back the other way: the plan is removed and the quota changes back.
        let back = plan_changes(
            Some(&promoted),
            &promoted_document(&target, Some(&promoted)),
        );
        let paths: Vec<&str> = back.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["plans[free].limits[images].quota", "plans[pro]"]);
        assert_eq!(back[1].change, "removed");
        // Identical documents: nothing.
        assert!(plan_changes(Some(&promoted), &promoted).is_empty());
    }

    #[test]
    fn a_new_order_of_plans_is_a_change() {
        let a = json!({"plans": [{"id": "a"}, {"id": "b"}]});
        let b = json!({"plans": [{"id": "b"}, {"id": "a"}]});
        let changes = plan_changes(Some(&a), &b);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "plans.order");
    }

    #[test]
    fn into_an_empty_environment_everything_is_added() {
        let source = doc(20, false, "p");
        let changes = plan_changes(None, &promoted_document(&source, None));
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        // In the order of the document's members as serde_json keeps them (by name).
        assert_eq!(paths, ["creditPacks", "defaultPlan", "plans"]);
    }
}
