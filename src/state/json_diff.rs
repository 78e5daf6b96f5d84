//! Structural difference of two JSON documents, as JSON Pointer paths
//! (RFC 6901). Objects are compared key by key; any other value, arrays
//! included, is compared as a whole.

use serde_json::Value;

/// Paths added, removed and changed from `before` to `after`, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Most paths listed per kind; a diff stops collecting there.
pub const MAX_PATHS: usize = 1_000;

pub fn diff(before: &Value, after: &Value) -> JsonDiff {
    let mut result = JsonDiff::default();
    walk(before, after, &mut String::new(), &mut result);
    result.added.sort();
    result.removed.sort();
    result.changed.sort();
    result
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn push(list: &mut Vec<String>, path: &str) {
    if list.len() < MAX_PATHS {
        list.push(if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        });
    }
}

fn walk(before: &Value, after: &Value, path: &mut String, result: &mut JsonDiff) {
    match (before, after) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, old_value) in old {
                let length = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match new.get(key) {
                    Some(new_value) => walk(old_value, new_value, path, result),
                    None => push(&mut result.removed, path),
                }
                path.truncate(length);
            }
            for key in new.keys().filter(|key| !old.contains_key(*key)) {
                push(&mut result.added, &format!("{path}/{}", escape(key)));
            }
        }
        _ if before != after => push(&mut result.changed, path),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_are_compared() {
        let before = json!({"tool": {"name": "ruff", "version": "0.16"}, "files": 3, "old": true});
        let after = json!({"tool": {"name": "ruff", "version": "0.17", "rules": 800}, "files": 3, "a/b": 1});
        let result = diff(&before, &after);
        assert_eq!(result.added, ["/a~1b", "/tool/rules"]);
        assert_eq!(result.removed, ["/old"]);
        assert_eq!(result.changed, ["/tool/version"]);
    }

    #[test]
    fn arrays_and_types_change_as_a_whole() {
        let result = diff(
            &json!({"list": [1, 2], "x": 1}),
            &json!({"list": [1, 3], "x": "1"}),
        );
        assert_eq!(result.changed, ["/list", "/x"]);
        assert_eq!(diff(&json!(1), &json!(2)).changed, ["/"]);
        assert_eq!(
            diff(&json!({"a": 1}), &json!({"a": 1})),
            JsonDiff::default()
        );
    }
}
