//! JSON bodies as an ordered tree, and the JSON changes by dotted path.
//!
//! `serde_json::Value` keeps an object's keys sorted (its `preserve_order` feature would
//! change the order for every crate built with this one, weir included), so `transform` has
//! its own value type, [`Json`], whose objects keep their keys in the order they came. Plain
//! JSON does not care; XML does: a SOAP `Header` must stay before its `Body`, and the
//! elements of a document converted to JSON, changed and converted back must come out in the
//! order they went in.
//!
//! Parsing goes through serde, so serde_json's recursion limit (128) still bounds a hostile
//! body's nesting.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Number;

use crate::JsonChanges;

/// An object: keys in the order they came (or were added).
pub(crate) type Object = IndexMap<String, Json>;

/// A JSON value whose objects keep their keys' order.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Json {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json holds it.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, in order.
    Object(Object),
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => serializer.collect_seq(items),
            Json::Object(object) => serializer.collect_map(object),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    /// A NaN or an infinity (TOML has them, JSON does not) becomes `null`, as it does in
    /// `serde_json::Value`.
    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    /// A repeated key keeps its first place and its last value, as in `serde_json::Value`.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Object::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

/// Applies one direction's JSON changes in their order: `unwrap`, `remove`, `rename`, `set`,
/// `add`, `wrap`.
pub(crate) fn apply(changes: &JsonChanges, value: &mut Json) {
    if let Some(path) = &changes.unwrap {
        *value = lookup(value, path).cloned().unwrap_or(Json::Null);
    }
    for path in &changes.remove {
        take(value, path);
    }
    for (path, new_key) in &changes.rename {
        let (parent, key) = split(path);
        if let Some(Json::Object(object)) = lookup_mut(value, parent) {
            rename(object, key, new_key);
        }
    }
    for (path, new) in &changes.set {
        put(value, path, new.clone(), true);
    }
    for (path, new) in &changes.add {
        put(value, path, new.clone(), false);
    }
    if let Some(key) = &changes.wrap {
        let inner = std::mem::take(value);
        *value = Json::Object(Object::from([(key.clone(), inner)]));
    }
}

/// Renames `key` to `new_key` in its place; a field already called `new_key` is replaced.
fn rename(object: &mut Object, key: &str, new_key: &str) {
    if key == new_key || !object.contains_key(key) {
        return;
    }
    object.shift_remove(new_key);
    if let Some(at) = object.get_index_of(key)
        && let Some((_, moved)) = object.shift_remove_index(at)
    {
        // `at` is at most the length now, and `new_key` is gone: a valid insertion point.
        object.shift_insert(at, new_key.to_owned(), moved);
    }
}

/// `a.b.c` → (`a.b`, `c`); `c` → (``, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('.').unwrap_or(("", path))
}

fn lookup<'a>(value: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(value, |v, key| match v {
        Json::Object(o) => o.get(key),
        Json::Array(a) => a.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

fn lookup_mut<'a>(value: &'a mut Json, path: &str) -> Option<&'a mut Json> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, key| match v {
        Json::Object(o) => o.get_mut(key),
        Json::Array(a) => a.get_mut(key.parse::<usize>().ok()?),
        _ => None,
    })
}

fn take(value: &mut Json, path: &str) -> Option<Json> {
    let (parent, key) = split(path);
    match lookup_mut(value, parent)? {
        Json::Object(o) => o.shift_remove(key),
        Json::Array(a) => {
            let i = key.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Sets `path` to `new`, creating missing parent objects; `overwrite = false` keeps an
/// existing value. A parent that exists but is not an object or array is left alone. A new
/// key goes last in its object; an existing one keeps its place.
fn put(value: &mut Json, path: &str, new: Json, overwrite: bool) {
    let mut keys = path.split('.').peekable();
    let mut current = value;
    while let Some(key) = keys.next() {
        let last = keys.peek().is_none();
        current = match current {
            Json::Object(o) => {
                if last {
                    if overwrite || !o.contains_key(key) {
                        o.insert(key.to_owned(), new);
                    }
                    return;
                }
                o.entry(key.to_owned())
                    .or_insert_with(|| Json::Object(Object::new()))
            }
            Json::Array(a) => {
                let Some(slot) = key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) else {
                    return;
                };
                if last {
                    if overwrite {
                        *slot = new;
                    }
                    return;
                }
                slot
            }
            _ => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::{Json, rename};

    fn parse(text: &str) -> Json {
        serde_json::from_str(text).expect("JSON")
    }

    #[test]
    fn objects_keep_their_order_through_a_round_trip() {
        let text =
            r#"{"zeta":1,"alpha":{"b":[true,null,"x"],"a":-2.5},"mid":18446744073709551615}"#;
        assert_eq!(serde_json::to_string(&parse(text)).expect("JSON"), text);
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let json = parse(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(
            serde_json::to_string(&json).expect("JSON"),
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn a_rename_keeps_the_field_in_its_place() {
        let Json::Object(mut object) = parse(r#"{"a":1,"b":2,"c":3}"#) else {
            panic!("object");
        };
        rename(&mut object, "b", "x");
        rename(&mut object, "c", "a");
        rename(&mut object, "missing", "y");
        let text = serde_json::to_string(&Json::Object(object)).expect("JSON");
        assert_eq!(text, r#"{"x":2,"a":3}"#);
    }

    #[test]
    fn nesting_beyond_serde_json_s_limit_is_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Json>(&deep).is_err());
    }
}
