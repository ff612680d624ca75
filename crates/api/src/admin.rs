//! Bodies of the install-level surface (API.md §7): `init` output, projects and keys (admin
//! token), the test clock, and health.

use crate::convert;
use crate::field::FieldError;
use serde::{Deserialize, Serialize};
use tollgate_core::input::InputError;
use utoipa::ToSchema;

/// Longest project name, in bytes.
pub const PROJECT_NAME_BYTES_MAX: usize = 200;
/// Longest key name, in bytes.
pub const KEY_NAME_BYTES_MAX: usize = 200;
/// Farthest one test-clock advance may go, in seconds (about ten years).
pub const CLOCK_ADVANCE_SECONDS_MAX: u64 = 10 * 366 * 24 * 3600;

/// What `tollgate init` prints once: every secret of a new install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitOutput {
    pub admin_token: String,
    pub project_id: String,
    pub keys: InitKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InitKeys {
    pub test: KeyPair,
    pub live: KeyPair,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPair {
    pub secret: String,
    pub publishable: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProjectRequest {
    #[schema(example = "my-app")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub name: String,
}

impl CreateProjectRequest {
    /// The checked project name.
    pub fn parse(self) -> Result<String, FieldError> {
        convert::bounded_name("name", &self.name, PROJECT_NAME_BYTES_MAX)?;
        Ok(self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectResponse {
    #[schema(example = "prj_7hq2")]
    pub project_id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Live,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Secret,
    Publishable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub environment: Environment,
    pub kind: KeyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub name: Option<String>,
}

impl CreateKeyRequest {
    /// The key's name: as given, or `default`.
    pub fn parse_name(&self) -> Result<String, FieldError> {
        match &self.name {
            None => Ok("default".to_string()),
            Some(name) => {
                convert::bounded_name("name", name, KEY_NAME_BYTES_MAX)?;
                Ok(name.clone())
            }
        }
    }
}

/// A new key; `key` is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    #[schema(example = "key_2k9d")]
    pub key_id: String,
    pub key: String,
    /// The first characters of the key, as listings show it.
    #[schema(example = "tg_sk_test_ab12")]
    pub prefix: String,
}

/// The install's new admin token, shown this once; the old one no longer works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedAdminToken {
    #[schema(example = "tg_admin_8fJ2kq0Zc1mN4pR7sT9vW3xY5aB6dE8g")]
    pub admin_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyResponse {
    pub key_id: String,
    pub project_id: String,
    pub environment: Environment,
    pub kind: KeyKind,
    pub name: String,
    pub prefix: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKey {
    pub key_id: String,
    pub revoked: bool,
}

/// The test environment's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockResponse {
    #[schema(format = DateTime)]
    pub now: String,
    pub offset_seconds: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdvanceClockRequest {
    /// How far to move the clock forward, `0 ..= 316224000` (about ten years).
    #[schema(maximum = 316224000)]
    pub seconds: u64,
}

impl AdvanceClockRequest {
    pub fn parse(self) -> Result<i64, FieldError> {
        if self.seconds > CLOCK_ADVANCE_SECONDS_MAX {
            return Err(convert::refuse(
                "seconds",
                InputError::OutOfRange {
                    min: 0,
                    max: CLOCK_ADVANCE_SECONDS_MAX,
                },
            ));
        }
        // Bounded above by a constant far below i64::MAX.
        Ok(self.seconds as i64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` (healthz); `ready`, or `degraded` when `problems` lists something the node works
    /// around while it serves (readyz).
    pub status: String,
    /// What a serving node works around (readyz only; left out when there is nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ReadyProblem>,
}

/// The code of a [`ReadyProblem`]: the newest stored plan document of an environment does not
/// load on this node, which serves an older version.
pub const PLAN_DOCUMENT_NOT_LOADED: &str = "plan_document_not_loaded";

/// Something a ready node works around: it answers, but not as its operator intends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyProblem {
    /// `plan_document_not_loaded`.
    pub code: String,
    pub message: String,
    #[schema(example = "prj_2x8R")]
    pub project_id: String,
    /// `live` or `test`.
    pub environment: String,
    /// The newest stored version, which does not load.
    pub stored_version: i64,
    /// The version in force instead; 0 when no stored version loads, and the environment's
    /// requests that need plans answer `503` until a document is applied.
    pub served_version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_advance_limit() {
        let ok = AdvanceClockRequest {
            seconds: CLOCK_ADVANCE_SECONDS_MAX,
        };
        assert!(ok.parse().is_ok());
        let over = AdvanceClockRequest {
            seconds: CLOCK_ADVANCE_SECONDS_MAX + 1,
        };
        assert_eq!(over.parse().unwrap_err().field, "seconds");
    }

    #[test]
    fn names_are_bounded() {
        let name = |n: usize| {
            CreateProjectRequest {
                name: "p".repeat(n),
            }
            .parse()
        };
        assert!(name(PROJECT_NAME_BYTES_MAX).is_ok());
        assert!(name(PROJECT_NAME_BYTES_MAX + 1).is_err());
        assert!(name(0).is_err());
    }
}
