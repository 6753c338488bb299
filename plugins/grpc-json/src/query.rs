//! A request's query parameters as fields of the input message, as `google.api.http`
//! maps them for a binding whose body is not the whole message: `?name=x&times=2`,
//! `?user.id=7` (a dotted path into nested messages), `?tag=a&tag=b` (a repeated field). A
//! parameter is percent- and `+`-decoded and set as JSON the protobuf JSON mapping reads:
//! a string for every scalar (numbers, enums by name or number, bytes as base64), `true` or
//! `false` for a bool. A parameter naming no field, or a message field, is refused, as
//! Envoy's transcoder refuses one by default (`ignore_unknown_query_parameters`).

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

/// Sets every parameter of `query` on `root`, the JSON of a message of type `input`.
pub(crate) fn fill(
    root: &mut Map<String, Value>,
    input: &MessageDescriptor,
    query: &str,
) -> Result<(), String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key), decode(value));
        set(root, input, &key, value)?;
    }
    Ok(())
}

/// Sets parameter `key` (a dotted field path) to `value`.
fn set(
    root: &mut Map<String, Value>,
    input: &MessageDescriptor,
    key: &str,
    value: String,
) -> Result<(), String> {
    let unknown = || {
        format!(
            "query parameter {key:?} is not a field of {}",
            input.full_name()
        )
    };
    let mut message = input.clone();
    let mut map = root;
    let mut names = key.split('.').peekable();
    while let Some(name) = names.next() {
        let field = message
            .get_field_by_name(name)
            .or_else(|| message.get_field_by_json_name(name))
            .ok_or_else(unknown)?;
        let json_name = field.name().to_owned();
        if names.peek().is_some() {
            // A step into a nested message.
            let Kind::Message(nested) = field.kind() else {
                return Err(unknown());
            };
            if field.is_list() || field.is_map() {
                return Err(format!(
                    "query parameter {key:?}: {name} is a list or map, not a message"
                ));
            }
            let next = map
                .entry(json_name)
                .or_insert_with(|| Value::Object(Map::new()));
            map = next
                .as_object_mut()
                .ok_or_else(|| format!("query parameter {key:?}: {name} is set twice"))?;
            message = nested;
            continue;
        }
        if field.is_map() || matches!(field.kind(), Kind::Message(_)) {
            return Err(format!(
                "query parameter {key:?} names a message field, which a query cannot set"
            ));
        }
        let value = match field.kind() {
            Kind::Bool => match value.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("query parameter {key:?} must be true or false")),
            },
            _ => Value::String(value),
        };
        if field.is_list() {
            match map
                .entry(json_name)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(list) => list.push(value),
                _ => return Err(format!("query parameter {key:?} is set twice")),
            }
        } else {
            map.insert(json_name, value);
        }
        return Ok(());
    }
    Err(unknown())
}

/// `+` as a space and `%XX` escapes decoded, as a form's query is; anything not UTF-8
/// afterwards is replaced.
fn decode(text: &str) -> String {
    crate::percent_decode(&text.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::fill;

    fn input() -> prost_reflect::MessageDescriptor {
        crate::tests::pool()
            .get_message_by_name("helloworld.HelloRequest")
            .expect("HelloRequest")
    }

    fn filled(query: &str) -> Result<Value, String> {
        let mut root = Map::new();
        fill(&mut root, &input(), query)?;
        Ok(Value::Object(root))
    }

    #[test]
    fn parameters_become_fields_by_the_json_mapping() {
        assert_eq!(
            filled("name=J%C3%BCrgen+M&times=3").expect("fields"),
            json!({"name": "Jürgen M", "times": "3"})
        );
        assert_eq!(filled("").expect("none"), json!({}));
        // The last of a repeated scalar wins on a singular field.
        assert_eq!(
            filled("times=1&times=2").expect("fields"),
            json!({"times": "2"})
        );
    }

    #[test]
    fn unknown_parameters_are_refused() {
        for query in ["nope=1", "name.x=1", "times.y=2"] {
            let why = filled(query).expect_err(query);
            assert!(why.contains("query parameter"), "{why}");
        }
    }
}
