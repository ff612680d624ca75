//! Persons (API.md §9): what Tollgate keeps about an end user beside their usage, and how it
//! goes away. A user's **traits** are the JSON object `POST /v1/identify` merges into what it
//! stored before; a usage event's **logged text** is its prompt and response, stored only while
//! the environment's `promptLogging` is on. Both go on request (`DELETE /v1/users/{userId}`,
//! [`EraseCommand`]); logged text also goes by itself once older than the environment's
//! `promptRetentionDays` (the retention purge, [`crate::Store::purge_logged_text`]). Either way
//! the usage events stay, with every count and field but the text.

use crate::{EnvId, StoreError, StoreResult};
use serde_json::{Map, Value};
use tollgate_core::input::UserId;

/// Most keys of a user's traits (after a merge).
pub const TRAITS_KEYS_MAX: usize = 64;
/// Longest a user's traits may be as serialized JSON, in bytes (after a merge).
pub const TRAITS_BYTES_MAX: usize = 16 * 1024;
/// Most usage events and reservations one erase or purge step clears, so that a user with a
/// million logged events, or a day of them past retention, never holds the writer for long:
/// each step is its own transaction.
pub const LOGGED_TEXT_BATCH_MAX: usize = 1000;

/// A user's traits: a JSON object of at most [`TRAITS_KEYS_MAX`] keys and
/// [`TRAITS_BYTES_MAX`] bytes serialized. Values are any JSON; a `null` value is kept as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traits(Map<String, Value>);

/// Why traits were refused: the limit they pass, for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TraitsError(pub String);

impl Traits {
    /// Traits as given, within the limits.
    pub fn new(map: Map<String, Value>) -> Result<Self, TraitsError> {
        let traits = Self(map);
        traits.within_limits()?;
        Ok(traits)
    }

    /// Traits as stored: read back without the input limits (they held when stored).
    pub fn from_stored(text: &str) -> StoreResult<Self> {
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(StoreError::Internal(
                "stored traits are not an object".into(),
            )),
            Err(e) => Err(StoreError::Internal(format!(
                "stored traits do not load: {e}"
            ))),
        }
    }

    /// The JSON object, as stored.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These traits with `newer`'s keys set over them (a key given again takes its new value),
    /// refused if the result passes a limit.
    pub fn merged(&self, newer: &Traits) -> Result<Traits, TraitsError> {
        let mut map = self.0.clone();
        map.extend(newer.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Traits::new(map)
    }

    fn within_limits(&self) -> Result<(), TraitsError> {
        if self.0.len() > TRAITS_KEYS_MAX {
            return Err(TraitsError(format!(
                "at most {TRAITS_KEYS_MAX} keys, got {}",
                self.0.len()
            )));
        }
        let bytes = self.to_json().len();
        if bytes > TRAITS_BYTES_MAX {
            return Err(TraitsError(format!(
                "at most {TRAITS_BYTES_MAX} bytes as JSON, got {bytes}"
            )));
        }
        Ok(())
    }
}

/// `DELETE /v1/users/{userId}`, one step: clears the logged text of at most `limit` of the
/// user's usage events and reservations, and deletes the user's traits. The caller repeats it
/// until a step clears fewer than `limit` rows.
#[derive(Debug, Clone)]
pub struct EraseCommand {
    pub env: EnvId,
    pub user_id: UserId,
    pub limit: usize,
}

/// What erasing cleared, summed over steps by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Prompts cleared: of usage events, and of reservations whose prompt is on no event
    /// (pending or expired ones).
    pub prompts: u64,
    /// Responses cleared (usage events).
    pub responses: u64,
    /// Keys of the traits deleted.
    pub traits: u64,
    /// Usage events and reservations changed by the step (at most its `limit`).
    pub rows: usize,
}

impl Erased {
    pub fn add(&mut self, step: Erased) {
        self.prompts += step.prompts;
        self.responses += step.responses;
        self.traits += step.traits;
        self.rows += step.rows;
    }
}

/// What a backend's [`crate::procedure::MeteringTx::erase_logged_text`] cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoggedTextCleared {
    pub prompts: u64,
    pub responses: u64,
    pub rows: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(json: &str) -> Result<Traits, TraitsError> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => Traits::new(map),
            _ => panic!("not an object"),
        }
    }

    fn keys(n: usize) -> String {
        let entries: Vec<String> = (0..n).map(|i| format!(r#""k{i}": {i}"#)).collect();
        format!("{{{}}}", entries.join(","))
    }

    #[test]
    fn keys_are_bounded_just_inside_and_just_outside() {
        assert_eq!(
            traits(&keys(TRAITS_KEYS_MAX)).unwrap().len(),
            TRAITS_KEYS_MAX
        );
        assert!(traits(&keys(TRAITS_KEYS_MAX + 1)).is_err());
    }

    #[test]
    fn bytes_are_bounded_just_inside_and_just_outside() {
        // `{"a":"…"}` is 8 bytes around the value.
        let inside = format!(r#"{{"a":"{}"}}"#, "x".repeat(TRAITS_BYTES_MAX - 8));
        assert_eq!(traits(&inside).unwrap().to_json().len(), TRAITS_BYTES_MAX);
        let outside = format!(r#"{{"a":"{}"}}"#, "x".repeat(TRAITS_BYTES_MAX - 7));
        assert!(traits(&outside).is_err());
    }

    #[test]
    fn a_merge_sets_the_newer_keys_and_is_bounded_as_a_whole() {
        let old = traits(r#"{"plan": "free", "name": "Ada"}"#).unwrap();
        let merged = old
            .merged(&traits(r#"{"plan": "pro", "seats": 3}"#).unwrap())
            .unwrap();
        assert_eq!(
            merged,
            traits(r#"{"plan": "pro", "name": "Ada", "seats": 3}"#).unwrap()
        );
        let full = traits(&keys(TRAITS_KEYS_MAX)).unwrap();
        assert!(full.merged(&traits(r#"{"k0": "again"}"#).unwrap()).is_ok());
        assert!(full.merged(&traits(r#"{"new": 1}"#).unwrap()).is_err());
    }

    #[test]
    fn stored_traits_read_back_and_a_non_object_is_internal() {
        let t = traits(r#"{"a": [1, {"b": null}]}"#).unwrap();
        assert_eq!(Traits::from_stored(&t.to_json()).unwrap(), t);
        assert!(matches!(
            Traits::from_stored("[1]"),
            Err(StoreError::Internal(_))
        ));
    }
}
