//! A readable diff of two object specs: which fields changed, from what to what.
//! Lists of named items (a view's schema) are matched by name, so adding one feature
//! shows as one added field rather than a shifted list.

use std::fmt;

use serde_json::Value;

/// One changed field of an object, e.g. `schema.monthly_fee.dtype: Float32 -> Float64`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Value| match v {
            Value::String(s) if s.contains('\n') || s.len() > 60 => {
                let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = one_line.chars().take(57).collect();
                if short.len() < one_line.len() {
                    format!("{short:?}...")
                } else {
                    format!("{short:?}")
                }
            }
            other => other.to_string(),
        };
        match (&self.old, &self.new) {
            (None, Some(new)) => write!(f, "+ {}: {}", self.path, show(new)),
            (Some(old), None) => write!(f, "- {}: {}", self.path, show(old)),
            (Some(old), Some(new)) => write!(f, "~ {}: {} -> {}", self.path, show(old), show(new)),
            (None, None) => write!(f, "~ {}", self.path),
        }
    }
}

/// Field-level changes from `old` to `new`.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn named(items: &[Value]) -> Option<Vec<(&str, &Value)>> {
    items
        .iter()
        .map(|item| item.get("name").and_then(Value::as_str).map(|n| (n, item)))
        .collect()
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                match b.get(key) {
                    Some(vb) => walk(&join(path, key), va, vb, out),
                    None => out.push(FieldChange {
                        path: join(path, key),
                        old: Some(va.clone()),
                        new: None,
                    }),
                }
            }
            for (key, vb) in b {
                if !a.contains_key(key) {
                    out.push(FieldChange {
                        path: join(path, key),
                        old: None,
                        new: Some(vb.clone()),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => match (named(a), named(b)) {
            (Some(na), Some(nb)) => {
                for (name, va) in &na {
                    match nb.iter().find(|(n, _)| n == name) {
                        Some((_, vb)) => walk(&join(path, name), va, vb, out),
                        None => out.push(FieldChange {
                            path: join(path, name),
                            old: Some((*va).clone()),
                            new: None,
                        }),
                    }
                }
                for (name, vb) in &nb {
                    if !na.iter().any(|(n, _)| n == name) {
                        out.push(FieldChange {
                            path: join(path, name),
                            old: None,
                            new: Some((*vb).clone()),
                        });
                    }
                }
                let oa: Vec<&str> = na.iter().map(|(n, _)| *n).collect();
                let ob: Vec<&str> = nb.iter().map(|(n, _)| *n).collect();
                let common_a: Vec<_> = oa.iter().filter(|n| ob.contains(n)).collect();
                let common_b: Vec<_> = ob.iter().filter(|n| oa.contains(n)).collect();
                if common_a != common_b {
                    out.push(FieldChange {
                        path: format!("{path} (order)"),
                        old: None,
                        new: None,
                    });
                }
            }
            _ => out.push(FieldChange {
                path: path.to_string(),
                old: Some(old.clone()),
                new: Some(new.clone()),
            }),
        },
        _ => out.push(FieldChange {
            path: path.to_string(),
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_lists_diff_by_name() {
        let old = json!({"ttl_seconds": 10, "schema": [{"name": "a", "dtype": "Int64"}, {"name": "b", "dtype": "Float32"}]});
        let new = json!({"ttl_seconds": 20, "schema": [{"name": "a", "dtype": "Float64"}, {"name": "c", "dtype": "Bool"}]});
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "~ schema.a.dtype: \"Int64\" -> \"Float64\"",
                "- schema.b: {\"dtype\":\"Float32\",\"name\":\"b\"}",
                "+ schema.c: {\"dtype\":\"Bool\",\"name\":\"c\"}",
                "~ ttl_seconds: 10 -> 20",
            ]
        );
    }
}
