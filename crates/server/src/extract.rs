//! Request extractors whose every refusal is an [`ApiError`] with the body of API.md §2.
//!
//! axum's own `Json`, `Path` and `Query` answer plain-text rejections with their own statuses;
//! these wrappers check the content type (415), the size (413) and the JSON (400 naming the
//! field, unknown fields included) and keep the body for idempotency fingerprints.
//!
//! A body is read straight into its type; only a body that does not read (or one an
//! `Idempotency-Key` header adds to) goes through a `serde_json::Value` first, which is what
//! names the field at fault in the `400`. Both reads accept the same bodies into the same
//! values, so the fast one changes no answer.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Whether the request says its body is JSON (`application/json`, any `+json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The raw body, within the size limit the router sets (`DefaultBodyLimit`).
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::invalid("", "the request body could not be read")
        }
    })
}

/// The body as JSON text: JSON content type required, UTF-8 required.
pub struct JsonText(pub String);

impl<S: Send + Sync> FromRequest<S> for JsonText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body_bytes(req, state).await?;
        String::from_utf8(bytes.to_vec())
            .map(JsonText)
            .map_err(|_| ApiError::invalid("", "the request body is not valid UTF-8"))
    }
}

fn parse_value(text: &str) -> Result<serde_json::Value, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::invalid("", format!("malformed JSON: {e}")))
}

fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    tollgate_api::from_json_value(value).map_err(ApiError::from)
}

/// `text` read into `T`, or the `400` that names what is wrong with it.
///
/// The direct read is tried first (an object only: [`tollgate_api::from_json_value`] refuses
/// anything else, where a struct would also read from an array). Whatever it refuses, the
/// value path reads again for the error it answers, so every refusal is worded as before; a
/// body it accepts (duplicate fields aside, which it refuses) the value path accepts too,
/// with the same result.
fn parse_typed<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    if let Some(body) = read_object(text) {
        return Ok(body);
    }
    typed(&parse_value(text)?)
}

/// `text` read directly into `T`, if it is one JSON object that reads.
fn read_object<T: DeserializeOwned>(text: &str) -> Option<T> {
    let object = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    object.then(|| serde_json::from_str(text).ok()).flatten()
}

/// A JSON body deserialized into `T`; unknown fields, wrong types and malformed JSON are `400`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonText(text) = JsonText::from_request(req, state).await?;
        parse_typed(&text).map(ApiJson)
    }
}

/// A JSON body whose fields are all optional: no body at all (and no content type) reads as
/// `T::default()`, so `POST /v1/reservations/{id}/commit` needs no `{}`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !declared_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::invalid("", "the request body is not valid UTF-8"))?;
        parse_typed(text).map(OptionalJson)
    }
}

/// The header that carries an idempotency key the Stripe way (API.md §1).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The body field the header stands for.
const IDEMPOTENCY_KEY_FIELD: &str = "idempotencyKey";

/// A JSON body deserialized into `T`, with what the fingerprint of the request for idempotency
/// is made from (computed only for a request that has an idempotency key).
///
/// The `Idempotency-Key` header is the body's `idempotencyKey` field by another name: a
/// header alone is put into the body before it is read (so the header and the field make the
/// same request, with the same fingerprint); both present and different is `400`.
pub struct IdempotentJson<T> {
    pub body: T,
    pub fingerprint: Fingerprint,
}

/// The body a request's fingerprint is made of; [`Fingerprint::hex`] computes it.
pub enum Fingerprint {
    /// The text as sent, which read directly into the body.
    Text(String),
    /// The parsed body, with the header's key put in.
    Value(serde_json::Value),
}

impl Fingerprint {
    /// Hex SHA-256 of the body's canonical JSON (keys sorted, no whitespace): the same request
    /// written differently has the same fingerprint.
    pub fn hex(&self) -> String {
        match self {
            // The text read into the body, so it reads as a value too; if it ever did not,
            // the raw text's hash still tells requests apart (and never panics on input).
            Fingerprint::Text(text) => match serde_json::from_str(text) {
                Ok(value) => fingerprint(&value),
                Err(_) => hex::encode(Sha256::digest(text.as_bytes())),
            },
            Fingerprint::Value(value) => fingerprint(value),
        }
    }
}

/// The `Idempotency-Key` header, if sent once as text.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header must be sent once",
        ));
    }
    let value = value.to_str().map_err(|_| {
        ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header must be visible ASCII",
        )
    })?;
    tollgate_core::input::IdempotencyKey::parse(value)
        .map(|key| Some(key.into_string()))
        .map_err(|e| ApiError::invalid("Idempotency-Key", format!("Idempotency-Key {e}")))
}

/// `value` with the header's key as its `idempotencyKey`; a body naming another key is `400`.
fn with_idempotency_header(
    mut value: serde_json::Value,
    header: Option<String>,
) -> Result<serde_json::Value, ApiError> {
    let (Some(key), Some(body)) = (header, value.as_object_mut()) else {
        return Ok(value);
    };
    match body.get(IDEMPOTENCY_KEY_FIELD) {
        None => {
            body.insert(IDEMPOTENCY_KEY_FIELD.into(), key.into());
        }
        Some(serde_json::Value::String(field)) if *field == key => {}
        Some(_) => {
            return Err(ApiError::invalid(
                IDEMPOTENCY_KEY_FIELD,
                "differs from the Idempotency-Key header; send the key once, or the same in both",
            ))
        }
    }
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for IdempotentJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Read before the body takes the request; judged after it, so a body that is not JSON
        // is 415 whatever the header says.
        let header = idempotency_header(req.headers());
        let JsonText(text) = JsonText::from_request(req, state).await?;
        if matches!(header, Ok(None)) {
            if let Some(body) = read_object(&text) {
                return Ok(IdempotentJson {
                    body,
                    fingerprint: Fingerprint::Text(text),
                });
            }
        }
        let value = with_idempotency_header(parse_value(&text)?, header?)?;
        let body = typed(&value)?;
        Ok(IdempotentJson {
            body,
            fingerprint: Fingerprint::Value(value),
        })
    }
}

/// Hex SHA-256 of the canonical form of `value`.
pub fn fingerprint(value: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// JSON with object keys sorted at every depth, whatever order the map type keeps.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Path parameters; a malformed one is `400`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::invalid("", e.body_text()))
    }
}

/// Query parameters; unknown or malformed ones are `400`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid("", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"userId":"u","event":"e","metadata":{"b":"1","a":"2"}}"#)
                .unwrap();
        let b = json!({"metadata": {"a": "2", "b": "1"}, "event": "e", "userId": "u"});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = json!({"metadata": {"a": "2", "b": "1"}, "event": "e", "userId": "v"});
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a).len(), 64);
    }

    #[test]
    fn json_content_types() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            h
        };
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("application/json; charset=utf-8")));
        assert!(is_json(&headers("Application/JSON")));
        assert!(is_json(&headers("application/merge-patch+json")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
