//! The stored text form of what a grant matches: its rules as JSON
//! (`[{"event": "image.*", "metadata": {"model": ["flux-pro"]}}]`), written and read the same
//! way by every backend.

use serde_json::{json, Map, Value};
use tollgate_core::plan::{EventPattern, MatchRule};

pub fn rules_json(rules: &[MatchRule]) -> String {
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| {
            let metadata: Map<String, Value> = r
                .metadata
                .iter()
                .map(|(k, values)| (k.clone(), json!(values)))
                .collect();
            json!({"event": r.event.as_str(), "metadata": metadata})
        })
        .collect();
    Value::Array(rules).to_string()
}

/// The rules back; `None` if the text is not what [`rules_json`] writes.
pub fn parse_rules(text: &str) -> Option<Vec<MatchRule>> {
    let Value::Array(rules) = serde_json::from_str(text).ok()? else {
        return None;
    };
    rules
        .iter()
        .map(|rule| {
            let event = EventPattern::stored(rule.get("event")?.as_str()?);
            let metadata = rule
                .get("metadata")?
                .as_object()?
                .iter()
                .map(|(k, values)| {
                    let values = values
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()?;
                    Some((k.clone(), values))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(MatchRule { event, metadata })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_as_written() {
        let rules = vec![
            MatchRule {
                event: EventPattern::parse("image.*").unwrap(),
                metadata: vec![("model".into(), vec!["a".into(), "b".into()])],
            },
            MatchRule {
                event: EventPattern::parse("llm.tokens").unwrap(),
                metadata: vec![],
            },
        ];
        let text = rules_json(&rules);
        assert_eq!(parse_rules(&text), Some(rules));
        assert_eq!(parse_rules("{}"), None);
        assert_eq!(parse_rules("[{\"event\": 3}]"), None);
    }
}
