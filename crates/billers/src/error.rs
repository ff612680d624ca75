//! Why a verified body could not be read as a biller event. Messages name the field, never the
//! body's contents.

/// A body that is not a biller event we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("the event lacks `{0}`")]
    MissingField(&'static str),
    #[error("`{0}` does not have the expected type or format")]
    BadField(&'static str),
}

impl ParseError {
    /// A short snake_case reason for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::MissingField(_) => "missing_field",
            Self::BadField(_) => "bad_field",
        }
    }

    /// Classifies a serde_json error while reading `what`: syntax is "not JSON", a type
    /// mismatch is a bad field. The serde message is dropped: it can quote the body.
    pub(crate) fn from_json(err: &serde_json::Error, what: &'static str) -> Self {
        match err.classify() {
            serde_json::error::Category::Data => Self::BadField(what),
            _ => Self::NotJson,
        }
    }
}
