//! `headers`: sets, appends and removes request and response headers, from config.
//!
//! For each direction the changes apply in a fixed order — `remove`, then `set`, then
//! `append` — whatever their order in the file. See the README for every key.
//!
//! The response changes do not depend on the response, so `on_request` leaves them for it
//! (`Request::set_response_header`, weir:plugin 0.3.1): weir applies them at this plugin's
//! place in the response phase, where an `on_response` would have made them, and calls the
//! plugin once per request instead of twice.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use weir_plugin::{Action, Filter, Hooks, Request};

/// The `[config]` table.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes to requests on their way upstream.
    #[serde(default)]
    pub request: Changes,
    /// Changes to responses on their way to the client.
    #[serde(default)]
    pub response: Changes,
}

/// One direction's changes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Headers to replace (every existing value goes).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to add a value to (existing values stay).
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }

    /// Header names lower-cased and checked, values checked, so a bad entry is a config
    /// error at load rather than a failed request.
    fn validate(mut self, direction: &str) -> Result<Changes, String> {
        let lower = |map: BTreeMap<String, String>, what: &str| {
            map.into_iter()
                .map(|(name, value)| {
                    check_name(&name).map_err(|e| format!("{direction}.{what}: {e}"))?;
                    // What a header value may not hold (RFC 9110 §5.5): control characters
                    // other than tab. weir would refuse each request's change otherwise.
                    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                        return Err(format!(
                            "{direction}.{what}.{name}: the value must not contain control characters (CR, LF, NUL, ...)"
                        ));
                    }
                    Ok((name.to_ascii_lowercase(), value))
                })
                .collect::<Result<BTreeMap<_, _>, String>>()
        };
        self.set = lower(self.set, "set")?;
        self.append = lower(self.append, "append")?;
        for name in &mut self.remove {
            check_name(name).map_err(|e| format!("{direction}.remove: {e}"))?;
            *name = name.to_ascii_lowercase();
        }
        Ok(self)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={} \t";
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
    {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// The filter: the validated changes for both directions.
#[derive(Debug)]
pub struct Headers {
    request: Changes,
    response: Changes,
}

impl Filter for Headers {
    type Config = Config;

    fn new(config: Config) -> Result<Headers, String> {
        Ok(Headers {
            request: config.request.validate("request")?,
            response: config.response.validate("response")?,
        })
    }

    fn hooks(&self) -> Hooks {
        // Both directions' changes are made by the request hook (see the module docs).
        if self.request.is_empty() && self.response.is_empty() {
            Hooks::NONE
        } else {
            Hooks::REQUEST
        }
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let c = &self.request;
        c.remove.iter().for_each(|n| request.remove_header(n));
        c.set.iter().for_each(|(n, v)| request.set_header(n, v));
        c.append
            .iter()
            .for_each(|(n, v)| request.append_header(n, v));
        let c = &self.response;
        c.remove
            .iter()
            .for_each(|n| request.remove_response_header(n));
        c.set
            .iter()
            .for_each(|(n, v)| request.set_response_header(n, v));
        c.append
            .iter()
            .for_each(|(n, v)| request.append_response_header(n, v));
        Action::Continue
    }
}

weir_plugin::export_filter!(Headers);

#[cfg(test)]
mod tests {
    use weir_plugin::Hooks;
    use weir_plugin::testing::{Harness, TestRequest};

    use super::Headers;

    const CONFIG: &str = r#"
[request]
set = { "X-From" = "weir" }
append = { "via-plugin" = "headers" }
remove = ["x-internal"]

[response]
set = { "x-frame-options" = "DENY" }
remove = ["server"]
"#;

    #[test]
    fn request_changes_apply_remove_then_set_then_append() {
        let headers = Harness::<Headers>::new(CONFIG).expect("valid config");
        let request = TestRequest::get("/")
            .header("x-internal", "secret")
            .header("x-from", "client")
            .header("via-plugin", "earlier");
        let forwarded = headers.request(request).forwarded();
        assert_eq!(forwarded.header_value("x-internal"), None);
        assert_eq!(forwarded.header_value("x-from"), Some("weir"));
        let via: Vec<&[u8]> = forwarded
            .headers
            .iter()
            .filter(|(n, _)| n == "via-plugin")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(via, [b"earlier".as_slice(), b"headers".as_slice()]);
    }

    #[test]
    fn response_changes_are_left_by_the_request_hook_and_apply() {
        let headers = Harness::<Headers>::new(CONFIG).expect("valid config");
        let forwarded = headers.request(TestRequest::get("/")).forwarded();
        assert_eq!(
            forwarded.header_value("x-frame-options"),
            None,
            "not upstream"
        );
        let response = headers
            .response(&forwarded, 200, &[("server", "origin/1.0")])
            .response();
        assert_eq!(response.header_value("server"), None);
        assert_eq!(response.header_value("x-frame-options"), Some("DENY"));
    }

    #[test]
    fn one_hook_for_either_direction_and_none_without_changes() {
        let only_request =
            Harness::<Headers>::new("[request]\nremove = [\"cookie\"]\n").expect("valid config");
        assert_eq!(only_request.hooks(), Hooks::REQUEST);
        let only_response =
            Harness::<Headers>::new("[response]\nremove = [\"server\"]\n").expect("valid config");
        assert_eq!(only_response.hooks(), Hooks::REQUEST);
        let nothing = Harness::<Headers>::new("").expect("valid config");
        assert_eq!(nothing.hooks(), Hooks::NONE);
    }

    #[test]
    fn bad_names_and_values_are_config_errors() {
        let bad_name = Harness::<Headers>::new("[request]\nset = { \"bad name\" = \"x\" }\n");
        assert_eq!(
            bad_name.err().as_deref(),
            Some("request.set: \"bad name\" is not a valid header name")
        );
        for value in ["a\\r\\nb", "a\\u0001b", "a\\u007fb"] {
            let bad_value =
                Harness::<Headers>::new(&format!("[response]\nset = {{ \"x\" = \"{value}\" }}\n"));
            assert!(
                bad_value
                    .err()
                    .is_some_and(|e| e.contains("must not contain control characters")),
                "{value}"
            );
        }
        let tab = Harness::<Headers>::new("[response]\nset = { \"x\" = \"a\\tb\" }\n");
        assert!(tab.is_ok(), "a tab is allowed in a value");
        let typo = Harness::<Headers>::new("[requests]\n");
        assert!(
            typo.err()
                .is_some_and(|e| e.contains("unknown field `requests`")),
            "unknown keys must be refused"
        );
    }
}
