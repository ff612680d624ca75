//! The secrets a test saw, and the check that no server ever logged one (issue 17: logs travel
//! to shippers and dashboards that secrets must not reach).
//!
//! Every [`super::Client`] notes the keys it sends and every secret-looking string in the JSON
//! it sends and receives: fields named like a secret or a token, and values with a key's or a
//! signing secret's prefix. [`super::TestServer`] adds the install's keys and, when it is
//! dropped at the end of a test, looks for each in every line its server wrote.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Shorter strings are not taken for secrets (test values like `"t"` or `"x1"`).
const SECRET_CHARS_MIN: usize = 12;
/// Prefixes of keys, tokens and signing secrets, whatever field holds them.
/// (`tg_` covers API keys, the admin token, user tokens and token secrets.)
const SECRET_PREFIXES: &[&str] = &[
    "tg_", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_", "polar_",
];

#[derive(Clone, Default)]
pub struct Secrets(Arc<Mutex<BTreeSet<String>>>);

fn secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("secret") || name.contains("token") || name.contains("apikey") || name == "key"
}

fn looks_secret(value: &str) -> bool {
    SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
}

impl Secrets {
    /// A secret by itself (a bearer key, a header value).
    pub fn note(&self, value: &str) {
        // A masked value (`whsec_…1234`) shows only its end, which is no secret.
        if value.len() >= SECRET_CHARS_MIN && !value.contains('…') {
            self.0.lock().unwrap().insert(value.to_string());
        }
    }

    /// Every secret-looking string in a JSON document.
    pub fn note_json(&self, value: &Value) {
        self.walk(value, false);
    }

    /// Every secret-looking string in a request or answer body, when it is JSON.
    pub fn note_body(&self, bytes: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            self.note_json(&value);
        }
    }

    fn walk(&self, value: &Value, in_secret_field: bool) {
        match value {
            Value::String(s) if in_secret_field || looks_secret(s) => self.note(s),
            Value::Array(items) => items.iter().for_each(|v| self.walk(v, in_secret_field)),
            Value::Object(map) => {
                for (name, v) in map {
                    self.walk(v, in_secret_field || secret_field(name));
                }
            }
            _ => {}
        }
    }

    /// The lines that hold a secret, with the secret. `allowed` lines may hold `allowed_in`.
    pub fn found_in<'a>(
        &self,
        lines: impl Iterator<Item = &'a String>,
        allowed: impl Fn(&str, &str) -> bool,
    ) -> Vec<String> {
        let secrets = self.0.lock().unwrap();
        let mut found = Vec::new();
        for line in lines {
            for secret in secrets.iter() {
                if line.contains(secret.as_str()) && !allowed(line, secret) {
                    found.push(format!("{secret} in: {line}"));
                }
            }
        }
        found
    }
}
