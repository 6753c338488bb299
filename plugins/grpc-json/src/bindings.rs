//! Which HTTP requests call which method. Every method answers `POST /package.Service/Method`
//! with the whole body as its input; a `google.api.http` annotation adds its own paths
//! (`post: "/v1/greeter/hello"`, `get: "/v1/greeter/{name}"`, `additional_bindings`).
//!
//! Path templates are a subset of `google.api.http`'s: literal segments, `*` (any one
//! segment), and variables `{field}` or `{field=*}` (one segment, into the field, dotted
//! paths for nested messages). `**` and multi-segment variables are refused in the config.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// One way to call a method.
#[derive(Debug)]
pub(crate) struct Binding {
    /// The HTTP method, upper case.
    pub(crate) http_method: String,
    pub(crate) template: Template,
    /// Where the body goes: `*` the whole message, a field name that field, `None` nowhere.
    pub(crate) body: Option<String>,
    pub(crate) method: MethodDescriptor,
}

/// A parsed path template.
#[derive(Debug)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    /// The variables' field paths, in the order they appear.
    pub(crate) variables: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`, or a variable (its value is a path variable).
    Any {
        variable: bool,
    },
}

impl Binding {
    /// The raw (percent-encoded) path variables if `method` and `path` call this binding.
    pub(crate) fn matches<'p>(&self, method: &str, path: &'p str) -> Option<Vec<&'p str>> {
        if method != self.http_method {
            return None;
        }
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut variables = Vec::new();
        for segment in &self.template.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Any { .. } if part.is_empty() => return None,
                Segment::Any { variable } => {
                    if *variable {
                        variables.push(part);
                    }
                }
            }
        }
        parts.next().is_none().then_some(variables)
    }
}

impl Template {
    pub(crate) fn parse(template: &str) -> Result<Template, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {template:?} does not start with /"))?;
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for part in rest.split('/') {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let field = match inner.split_once('=') {
                    Some((field, "*")) => field,
                    Some(_) => {
                        return Err(format!(
                            "path template {template:?}: only one-segment variables are supported"
                        ));
                    }
                    None => inner,
                };
                if field.is_empty() {
                    return Err(format!(
                        "path template {template:?}: a variable has no name"
                    ));
                }
                variables.push(field.to_owned());
                segments.push(Segment::Any { variable: true });
            } else if part == "*" {
                segments.push(Segment::Any { variable: false });
            } else if part.is_empty() || part.contains(['{', '}', '*']) {
                return Err(format!("path template {template:?} is not supported"));
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
        }
        Ok(Template {
            segments,
            variables,
        })
    }
}

/// Every binding of `method`: its default one, then its annotation's.
pub(crate) fn of(pool: &DescriptorPool, method: &MethodDescriptor) -> Result<Vec<Binding>, String> {
    let default = Binding {
        http_method: "POST".into(),
        template: Template {
            segments: vec![
                Segment::Literal(method.parent_service().full_name().to_owned()),
                Segment::Literal(method.name().to_owned()),
            ],
            variables: Vec::new(),
        },
        body: Some("*".into()),
        method: method.clone(),
    };
    let mut all = vec![default];
    if method.is_client_streaming() {
        return Err(format!(
            "{}: client-streaming methods cannot be called with JSON",
            method.full_name()
        ));
    }
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(all);
    };
    let options = method.options();
    if !options.has_extension(&http) {
        return Ok(all);
    }
    if let Value::Message(rule) = options.get_extension(&http).as_ref() {
        annotated(rule, method, &mut all, true)?;
    }
    Ok(all)
}

/// The bindings of one `HttpRule` (and its `additional_bindings`, one level deep as
/// `google.api.http` allows).
fn annotated(
    rule: &DynamicMessage,
    method: &MethodDescriptor,
    all: &mut Vec<Binding>,
    top: bool,
) -> Result<(), String> {
    let name = method.full_name();
    let text = |field: &str| -> Option<String> {
        if !rule.has_field_by_name(field) {
            return None;
        }
        match rule.get_field_by_name(field)?.as_ref() {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    };
    let pattern = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find_map(|verb| text(verb).map(|path| (verb.to_ascii_uppercase(), path)));
    let pattern = pattern.or_else(|| {
        let custom = rule.get_field_by_name("custom")?;
        let custom = custom.as_message()?;
        let kind = custom.get_field_by_name("kind")?.as_str()?.to_owned();
        let path = custom.get_field_by_name("path")?.as_str()?.to_owned();
        (!kind.is_empty()).then_some((kind, path))
    });
    if let Some((http_method, path)) = pattern {
        let template = Template::parse(&path).map_err(|e| format!("{name}: {e}"))?;
        let body = text("body").filter(|b| !b.is_empty());
        if let Some(field) = body.as_deref().filter(|b| *b != "*")
            && method.input().get_field_by_name(field).is_none()
        {
            return Err(format!(
                "{name}: body field {field:?} is not in the input message"
            ));
        }
        all.push(Binding {
            http_method,
            template,
            body,
            method: method.clone(),
        });
    }
    // `additional_bindings` of an additional binding are ignored, as the spec says.
    if top
        && let Some(extra) = rule.get_field_by_name("additional_bindings")
        && let Some(list) = extra.as_list()
    {
        for rule in list.iter().filter_map(Value::as_message) {
            annotated(rule, method, all, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Segment, Template};

    #[test]
    fn templates_parse_literals_wildcards_and_one_segment_variables() {
        let template = Template::parse("/v1/{user.id}/*/items/{item=*}/all:list").expect("valid");
        assert_eq!(template.variables, ["user.id", "item"]);
        assert_eq!(template.segments[0], Segment::Literal("v1".into()));
        assert_eq!(template.segments[2], Segment::Any { variable: false });
        for bad in [
            "v1/x",
            "/v1/**",
            "/v1/{name=a/*}",
            "/v1//x",
            "/v1/{}",
            "/v1/{name}:verb",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
