//! Checked input types and the named input limits of API.md §1.
//!
//! "Parse, don't validate": once a value is one of these newtypes it is known to be within its
//! limits, so nothing past the HTTP layer handles a raw user id, event name or quantity.

use std::collections::BTreeMap;
use std::fmt;

/// Longest user id or account id, in bytes.
pub const SUBJECT_ID_BYTES_MAX: usize = 256;
/// Longest event name, in bytes (`[A-Za-z0-9_.:-]`).
pub const EVENT_NAME_BYTES_MAX: usize = 128;
/// Most metadata entries on one event.
pub const METADATA_ENTRIES_MAX: usize = 32;
/// Longest metadata key, in bytes (`[A-Za-z0-9_.:-]`).
pub const METADATA_KEY_BYTES_MAX: usize = 64;
/// Longest metadata value, in bytes.
pub const METADATA_VALUE_BYTES_MAX: usize = 512;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest stored prompt or response, in bytes; longer text is truncated and flagged.
pub const TEXT_BYTES_MAX: usize = 32 * 1024;
/// Largest quantity or money amount: 2^53 - 1, the largest integer every JSON client keeps exact.
pub const QUANTITY_MAX: u64 = (1 << 53) - 1;
/// Shortest reservation TTL, in seconds.
pub const TTL_SECONDS_MIN: u32 = 1;
/// Longest reservation TTL, in seconds.
pub const TTL_SECONDS_MAX: u32 = 3600;
/// TTL of a reservation that names none, in seconds.
pub const TTL_SECONDS_DEFAULT: u32 = 60;
/// How far back `occurredAt` of a tracked event may lie, in seconds (35 days).
pub const OCCURRED_AT_PAST_SECONDS_MAX: i64 = 35 * 24 * 3600;
/// Longest release reason, in bytes.
pub const RELEASE_REASON_BYTES_MAX: usize = 500;
/// Longest release error code, in bytes.
pub const RELEASE_ERROR_CODE_BYTES_MAX: usize = 100;
/// How long an idempotency key is remembered, in seconds (24 h).
pub const IDEMPOTENCY_RETENTION_SECONDS: i64 = 24 * 3600;

/// Why an input value was refused. The HTTP layer adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes")]
    TooLong { max: usize },
    #[error("must contain only {allowed}")]
    InvalidCharacter { allowed: &'static str },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must be between {min} and {max}")]
    OutOfRange { min: u64, max: u64 },
    #[error("must have at most {max} entries")]
    TooMany { max: usize },
}

fn check_name(s: &str, max: usize) -> Result<(), InputError> {
    if s.is_empty() {
        return Err(InputError::Empty);
    }
    if s.len() > max {
        return Err(InputError::TooLong { max });
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if !ok {
        return Err(InputError::InvalidCharacter {
            allowed: "A-Z a-z 0-9 _ . : -",
        });
    }
    Ok(())
}

fn check_subject_id(s: &str) -> Result<(), InputError> {
    if s.is_empty() {
        return Err(InputError::Empty);
    }
    if s.len() > SUBJECT_ID_BYTES_MAX {
        return Err(InputError::TooLong {
            max: SUBJECT_ID_BYTES_MAX,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(InputError::ControlCharacter);
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, InputError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), InputError> = $check;
                check(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// The app's own id of an end user: 1–256 bytes, no control characters.
    UserId,
    check_subject_id
);
string_newtype!(
    /// The app's own id of an account (a B2B workspace): 1–256 bytes, no control characters.
    AccountId,
    check_subject_id
);
string_newtype!(
    /// A usage event name in dot notation, `[A-Za-z0-9_.:-]{1,128}`.
    EventName,
    |s| check_name(s, EVENT_NAME_BYTES_MAX)
);
string_newtype!(
    /// A client-chosen key that makes a retried reserve or track safe: 1–128 bytes.
    IdempotencyKey,
    |s| {
        if s.is_empty() {
            return Err(InputError::Empty);
        }
        if s.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(InputError::TooLong {
                max: IDEMPOTENCY_KEY_BYTES_MAX,
            });
        }
        Ok(())
    }
);

/// A quantity of units, `0 ..= 2^53-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(u64);

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);
    pub const ONE: Quantity = Quantity(1);

    pub fn new(n: u64) -> Result<Self, InputError> {
        if n > QUANTITY_MAX {
            return Err(InputError::OutOfRange {
                min: 0,
                max: QUANTITY_MAX,
            });
        }
        Ok(Self(n))
    }
    /// A quantity that must be at least 1 (reserve, a positive grant).
    pub fn positive(n: u64) -> Result<Self, InputError> {
        if n == 0 || n > QUANTITY_MAX {
            return Err(InputError::OutOfRange {
                min: 1,
                max: QUANTITY_MAX,
            });
        }
        Ok(Self(n))
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A reservation time-to-live in seconds, `1 ..= 3600`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlSeconds(u32);

impl TtlSeconds {
    pub const DEFAULT: TtlSeconds = TtlSeconds(TTL_SECONDS_DEFAULT);

    pub fn new(n: u64) -> Result<Self, InputError> {
        if n < u64::from(TTL_SECONDS_MIN) || n > u64::from(TTL_SECONDS_MAX) {
            return Err(InputError::OutOfRange {
                min: TTL_SECONDS_MIN.into(),
                max: TTL_SECONDS_MAX.into(),
            });
        }
        Ok(Self(n as u32))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A flat string map describing one event (`model=flux-pro`): at most 32 entries, keys
/// `[A-Za-z0-9_.:-]{1,64}`, values at most 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Metadata(BTreeMap<String, String>);

/// Which part of a metadata map was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    /// The offending key, when one entry is at fault.
    pub key: Option<String>,
    pub error: InputError,
}

impl Metadata {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if map.len() > METADATA_ENTRIES_MAX {
            return Err(MetadataError {
                key: None,
                error: InputError::TooMany {
                    max: METADATA_ENTRIES_MAX,
                },
            });
        }
        for (k, v) in &map {
            check_name(k, METADATA_KEY_BYTES_MAX).map_err(|error| MetadataError {
                key: Some(k.clone()),
                error,
            })?;
            if v.len() > METADATA_VALUE_BYTES_MAX {
                return Err(MetadataError {
                    key: Some(k.clone()),
                    error: InputError::TooLong {
                        max: METADATA_VALUE_BYTES_MAX,
                    },
                });
            }
        }
        Ok(Self(map))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `other` merged over `self` (commit metadata over the reserve's). The merge may exceed
    /// the entry limit only if the caller checked neither side; both were checked, so a merged
    /// map above the cap is refused rather than silently cut.
    pub fn merged(&self, other: &Metadata) -> Result<Metadata, MetadataError> {
        let mut map = self.0.clone();
        for (k, v) in &other.0 {
            map.insert(k.clone(), v.clone());
        }
        Metadata::parse(map)
    }
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.clone()
    }
}

/// Stored prompt or response text, cut to [`TEXT_BYTES_MAX`] at a char boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredText {
    pub text: String,
    pub truncated: bool,
}

impl StoredText {
    pub fn new(mut text: String) -> Self {
        if text.len() <= TEXT_BYTES_MAX {
            return Self {
                text,
                truncated: false,
            };
        }
        let mut cut = TEXT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        Self {
            text,
            truncated: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_limits() {
        assert!(UserId::parse("a".repeat(SUBJECT_ID_BYTES_MAX)).is_ok());
        assert_eq!(
            UserId::parse("a".repeat(SUBJECT_ID_BYTES_MAX + 1)),
            Err(InputError::TooLong { max: 256 })
        );
        assert_eq!(UserId::parse(""), Err(InputError::Empty));
        assert_eq!(UserId::parse("a\u{7}b"), Err(InputError::ControlCharacter));
        assert!(UserId::parse("user@example.com é").is_ok());
    }

    #[test]
    fn event_name_limits() {
        assert!(EventName::parse("e".repeat(EVENT_NAME_BYTES_MAX)).is_ok());
        assert!(EventName::parse("e".repeat(EVENT_NAME_BYTES_MAX + 1)).is_err());
        assert!(EventName::parse("image.render:v2-x_y").is_ok());
        assert!(EventName::parse("image render").is_err());
        assert!(EventName::parse("image/*").is_err());
    }

    #[test]
    fn metadata_limits() {
        let full: BTreeMap<_, _> = (0..METADATA_ENTRIES_MAX)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(Metadata::parse(full.clone()).is_ok());
        let mut over = full;
        over.insert("extra".into(), "v".into());
        assert_eq!(
            Metadata::parse(over).unwrap_err().error,
            InputError::TooMany { max: 32 }
        );
        let key = |k: String| Metadata::parse([(k, "v".to_string())].into());
        assert!(key("k".repeat(METADATA_KEY_BYTES_MAX)).is_ok());
        assert!(key("k".repeat(METADATA_KEY_BYTES_MAX + 1)).is_err());
        let value = |v: String| Metadata::parse([("k".to_string(), v)].into());
        assert!(value("v".repeat(METADATA_VALUE_BYTES_MAX)).is_ok());
        assert!(value("v".repeat(METADATA_VALUE_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn quantity_and_ttl_limits() {
        assert!(Quantity::new(QUANTITY_MAX).is_ok());
        assert!(Quantity::new(QUANTITY_MAX + 1).is_err());
        assert!(Quantity::positive(0).is_err());
        assert!(TtlSeconds::new(1).is_ok());
        assert!(TtlSeconds::new(3600).is_ok());
        assert!(TtlSeconds::new(0).is_err());
        assert!(TtlSeconds::new(3601).is_err());
        assert!(IdempotencyKey::parse("k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse("k".repeat(129)).is_err());
    }

    #[test]
    fn text_is_truncated_on_a_char_boundary() {
        let t = StoredText::new("é".repeat(TEXT_BYTES_MAX));
        assert!(t.truncated);
        assert!(t.text.len() <= TEXT_BYTES_MAX);
        let short = StoredText::new("hi".into());
        assert!(!short.truncated);
    }
}
