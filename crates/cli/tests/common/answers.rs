//! Reading answers: finding a limit state, sorting string lists, integer fields, and the
//! assertions several test files share (counts, allowed and denied decisions).

use serde_json::Value;

use super::client::Client;

/// The limit state with `limitId == id` in `v["limits"]`.
#[track_caller]
pub fn limit<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("answer has no `limits` array: {v}"))
        .iter()
        .find(|l| l["limitId"] == id)
        .unwrap_or_else(|| panic!("answer has no limit {id:?}: {v}"))
}

/// Sorted `limitId`s of `v["limits"]`.
pub fn limit_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("answer has no `limits` array: {v}"))
        .iter()
        .map(|l| l["limitId"].as_str().expect("limitId string").to_string())
        .collect();
    ids.sort();
    ids
}

/// Sorted strings of a JSON array (e.g. `deniedBy`, `reasons`).
#[track_caller]
pub fn strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in {v}"))
                .to_string()
        })
        .collect();
    out.sort();
    out
}

pub fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Integer field; panics if absent or not an integer (a float is a failure: API.md §1).
#[track_caller]
pub fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("field {field:?} should be an integer in {v}"))
}

/// Asserts the `used`/`reserved`/`remaining`/`quota` numbers of a limit state, and the §3 rule
/// `remaining = max(0, quota - used - reserved)`.
#[track_caller]
pub fn assert_counts(state: &Value, quota: i64, used: i64, reserved: i64) {
    let got = (
        int(state, "quota"),
        int(state, "used"),
        int(state, "reserved"),
    );
    assert_eq!(
        got,
        (quota, used, reserved),
        "(quota, used, reserved) of {}: {state}",
        state["limitId"]
    );
    assert_eq!(
        int(state, "remaining"),
        (quota - used - reserved).max(0),
        "remaining must be max(0, quota - used - reserved): {state}"
    );
}

/// A list answer: the body if it is an array, else the first array-valued field of the object
/// (API.md leaves the envelope of some lists open).
#[track_caller]
pub fn rows(v: &Value) -> Vec<Value> {
    if let Some(a) = v.as_array() {
        return a.clone();
    }
    v.as_object()
        .and_then(|o| o.values().find_map(|x| x.as_array().cloned()))
        .unwrap_or_else(|| panic!("expected a list answer: {v}"))
}

/// Does `key` appear as an object key anywhere in `v`?
pub fn has_key_anywhere(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| k == key || has_key_anywhere(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key_anywhere(x, key)),
        _ => false,
    }
}

/// A denied reserve (or check) answer: `allowed: false`, no reservation, decided by `plan`,
/// with exactly these `reasons` and `deniedBy`.
#[track_caller]
pub fn assert_denied(answer: &Value, plan: &str, reasons: &[&str], denied_by: &[&str]) {
    assert_eq!(answer["allowed"], false, "should be denied: {answer}");
    if answer.get("reservationId").is_some() {
        assert_eq!(answer["reservationId"], Value::Null, "{answer}");
    }
    assert_eq!(answer["planId"], plan, "the plan that decided: {answer}");
    assert_eq!(
        strs(&answer["reasons"]),
        sorted(reasons),
        "reasons: {answer}"
    );
    assert_eq!(
        strs(&answer["deniedBy"]),
        sorted(denied_by),
        "deniedBy: {answer}"
    );
}

/// An allowed reserve answer decided by `plan`; returns the reservation id.
#[track_caller]
pub fn assert_allowed(answer: &Value, plan: &str) -> String {
    let id = Client::must_allow(answer);
    assert_eq!(answer["planId"], plan, "the plan that decided: {answer}");
    id
}
