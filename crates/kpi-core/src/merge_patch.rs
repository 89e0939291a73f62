//! RFC 7386 JSON merge patches: the difference between two messages, and applying one.
//!
//! A merge patch cannot set a member to `null` (null means "remove"), so a
//! member that becomes `null` is removed by the patch: readers of kpistream
//! messages treat an absent member and a `null` one alike.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new` (up to null members, above).
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, ov) in o {
                match n.get(k) {
                    None | Some(Value::Null) if !ov.is_null() => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    _ => {}
                }
            }
            for (k, nv) in n {
                if nv.is_null() {
                    continue;
                }
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov @ Value::Object(_)) if nv.is_object() => {
                        patch.insert(k.clone(), diff(ov, nv));
                    }
                    _ => {
                        patch.insert(k.clone(), strip_nulls(nv));
                    }
                }
            }
            Value::Object(patch)
        }
        _ => strip_nulls(new),
    }
}

/// Applies `patch` to `target` as RFC 7386 says.
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                apply(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `v` without null object members, at any depth: what a patch can carry
/// and what applying one yields.
pub fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), strip_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_rfc_examples_apply() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"}});
        apply(&mut t, &json!({"a":"z","c":{"f":null}}));
        assert_eq!(t, json!({"a":"z","c":{"d":"e"}}));
        let mut t = json!({"a":[{"b":"c"}]});
        apply(&mut t, &json!({"a":[1]}));
        assert_eq!(t, json!({"a":[1]}));
    }

    #[test]
    fn a_diff_holds_only_what_changed() {
        let old = json!({"seq":1,"kpi":"k","stats":{"count":1,"sum":2.0},"previous":null});
        let new = json!({"seq":2,"kpi":"k","stats":{"count":2,"sum":2.0},"previous":{"x":1}});
        assert_eq!(
            diff(&old, &new),
            json!({"seq":2,"stats":{"count":2},"previous":{"x":1}})
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..5).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_new_value_up_to_nulls(old in value(), new in value()) {
            let mut t = strip_nulls(&old);
            apply(&mut t, &diff(&old, &new));
            prop_assert_eq!(t, strip_nulls(&new));
        }
    }
}
