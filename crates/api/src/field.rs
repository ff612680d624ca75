//! Refusals of request bodies that name the JSON field at fault.
//!
//! API.md §2 promises that a `400 invalid_request` names the field in `field`, as a JSON path
//! (`metadata.model`, `plans[0].limits[1].window.timezone`). Serde's own errors carry no path,
//! so every body is deserialized through `serde_path_to_error` here, and the domain checks that
//! follow build paths with [`field_path`] and [`index_path`].

use serde::de::DeserializeOwned;
use std::fmt;

/// A request value that was refused; `field` is its JSON path (empty for the body as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error seen from one level up: `prefix.field`.
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: field_path(prefix, &self.field),
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// `parent.child`, or `child` at the root.
pub fn field_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ => format!("{parent}.{child}"),
    }
}

/// `parent[index]`.
pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Deserializes a parsed JSON value into `T`, naming the field of the first error.
///
/// Every body of the API is a JSON object; serde would also read a struct from an array of its
/// fields in order (`["u_42", "image.render"]` as a reserve, `[null]` as a plan document), so
/// anything but an object is refused first.
pub fn from_json_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new("", "the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| describe(e.path(), e.inner()))
}

/// Parses JSON text into `T`, naming the field of the first error. Syntax errors have no field.
pub fn from_json_str<T: DeserializeOwned>(text: &str) -> Result<T, FieldError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FieldError {
        field: String::new(),
        message: format!("malformed JSON: {e}"),
    })?;
    from_json_value(&value)
}

fn describe(path: &serde_path_to_error::Path, error: &serde_json::Error) -> FieldError {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => field = index_path(&field, *index),
            Segment::Map { key } => field = field_path(&field, key),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    let message = error.to_string();
    // A missing field is reported at its parent; the client wants the field itself.
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            field = field_path(&field, &rest[..end]);
        }
    }
    FieldError {
        field,
        message: plain_words(&message),
    }
}

/// Serde names Rust types (`expected u64`); clients think in JSON.
fn plain_words(message: &str) -> String {
    const REPLACEMENTS: [(&str, &str); 7] = [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u16", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected a boolean", "expected true or false"),
        ("expected struct ", "expected an object "),
    ];
    let mut out = message.to_string();
    for (from, to) in REPLACEMENTS {
        out = out.replace(from, to);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        user_id: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        quantity: u64,
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let e = from_json_str::<Outer>(r#"{"userId":"u","quantiy":1}"#).unwrap_err();
        assert_eq!(e.field, "quantiy");
        let e = from_json_str::<Outer>(r#"{"items":[]}"#).unwrap_err();
        assert_eq!(e.field, "userId");
        let e = from_json_str::<Outer>(r#"{"userId":"u","items":[{"quantity":1},{"q":1}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "items[1].q");
    }

    #[test]
    fn floats_and_negatives_are_not_quantities() {
        for bad in ["1.5", "-1", "\"1\"", "1e3"] {
            let text = format!(r#"{{"userId":"u","items":[{{"quantity":{bad}}}]}}"#);
            let e = from_json_str::<Outer>(&text).unwrap_err();
            assert_eq!(e.field, "items[0].quantity", "{bad}");
        }
    }

    #[test]
    fn only_objects_are_bodies() {
        for bad in [r#"["u", []]"#, "[null, null]", "null", "1", r#""u""#] {
            let e = from_json_str::<Outer>(bad).unwrap_err();
            assert_eq!(e.field, "", "{bad}");
            assert_eq!(e.message, "the body must be a JSON object", "{bad}");
        }
        assert!(from_json_str::<Outer>(r#"{"userId":"u"}"#).is_ok());
    }

    #[test]
    fn malformed_json_has_no_field() {
        let e = from_json_str::<Outer>("{").unwrap_err();
        assert_eq!(e.field, "");
        assert!(e.message.starts_with("malformed JSON"));
    }
}
