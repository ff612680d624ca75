//! Field-level conversions from wire values to core newtypes, shared by every request type.
//!
//! Each takes the JSON path of the field it converts, so a refusal names exactly that field.

use crate::field::{field_path, FieldError};
use std::collections::BTreeMap;
use tollgate_core::input::{
    EventName, IdempotencyKey, InputError, Metadata, Quantity, StoredText, UserId, QUANTITY_MAX,
};

pub(crate) fn refuse(field: &str, error: InputError) -> FieldError {
    FieldError::new(field, error.to_string())
}

pub(crate) fn user_id(field: &str, s: String) -> Result<UserId, FieldError> {
    UserId::parse(s).map_err(|e| refuse(field, e))
}

pub(crate) fn event_name(field: &str, s: String) -> Result<EventName, FieldError> {
    EventName::parse(s).map_err(|e| refuse(field, e))
}

pub(crate) fn metadata(
    field: &str,
    map: Option<BTreeMap<String, String>>,
) -> Result<Metadata, FieldError> {
    Metadata::parse(map.unwrap_or_default()).map_err(|e| match e.key {
        Some(key) => refuse(&field_path(field, &key), e.error),
        None => refuse(field, e.error),
    })
}

pub(crate) fn idempotency_key(
    field: &str,
    s: Option<String>,
) -> Result<Option<IdempotencyKey>, FieldError> {
    s.map(|s| IdempotencyKey::parse(s).map_err(|e| refuse(field, e)))
        .transpose()
}

/// A quantity `0 ..= 2^53-1`, or `default` when absent.
pub(crate) fn quantity(
    field: &str,
    n: Option<u64>,
    default: Quantity,
) -> Result<Quantity, FieldError> {
    n.map_or(Ok(default), |n| {
        Quantity::new(n).map_err(|e| refuse(field, e))
    })
}

/// Money in millionths: an integer `0 ..= 2^53-1`.
pub(crate) fn micros(field: &str, n: Option<u64>) -> Result<Option<u64>, FieldError> {
    match n {
        Some(n) if n > QUANTITY_MAX => Err(refuse(
            field,
            InputError::OutOfRange {
                min: 0,
                max: QUANTITY_MAX,
            },
        )),
        other => Ok(other),
    }
}

pub(crate) fn stored_text(s: Option<String>) -> Option<StoredText> {
    s.map(StoredText::new)
}

/// Free text up to `max` bytes with no control characters other than newlines and tabs.
pub(crate) fn bounded_text(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.len() > max {
        return Err(refuse(field, InputError::TooLong { max }));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(refuse(field, InputError::ControlCharacter));
    }
    Ok(())
}

/// A name of 1..=`max` bytes with no control characters (project and key names, biller ids).
pub(crate) fn bounded_name(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(refuse(field, InputError::Empty));
    }
    if s.len() > max {
        return Err(refuse(field, InputError::TooLong { max }));
    }
    if s.chars().any(char::is_control) {
        return Err(refuse(field, InputError::ControlCharacter));
    }
    Ok(())
}
