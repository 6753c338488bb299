//! `rewrite`: ordered rules that change a request's path, host and query, or redirect it.
//! See the README for every key.
//!
//! Each rule has conditions (path regex, methods, headers equal or present) and actions.
//! Rules run in order; every rule whose conditions hold applies its actions to the request
//! as the previous rules left it, until a rule with `last = true` or a redirect. Within a
//! rule the actions apply in a fixed order: `rewrite`, `strip_prefix`, `add_prefix`, `host`,
//! `query_remove`, `query_set`, then `redirect`.

#![forbid(unsafe_code)]

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;

use regex::{CaptureLocations, Regex};
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The rules, in the order they are tried.
    pub rules: Vec<RuleConfig>,
}

/// One rule: conditions, then actions.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A regex the path must match; its groups feed `rewrite` and `redirect`.
    #[serde(default)]
    pub path: Option<String>,
    /// Methods the rule applies to; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must be present, with any value.
    #[serde(default)]
    pub present: Vec<String>,
    /// A new path, with `$1` / `${name}` from `path`'s groups.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// A prefix removed from the path (at a segment boundary).
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// A prefix put in front of the path.
    #[serde(default)]
    pub add_prefix: Option<String>,
    /// A new `Host` for the upstream request.
    #[serde(default)]
    pub host: Option<String>,
    /// Query parameters removed.
    #[serde(default)]
    pub query_remove: Vec<String>,
    /// Query parameters set (replacing any with the same name).
    #[serde(default)]
    pub query_set: BTreeMap<String, String>,
    /// Answer with a redirect to this location (`$1` / `${name}` from `path`'s groups).
    #[serde(default)]
    pub redirect: Option<String>,
    /// The redirect's status: 301, 302, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub redirect_status: u16,
    /// Append the request's query to the redirect location.
    #[serde(default = "yes")]
    pub redirect_keep_query: bool,
    /// Stop after this rule when it applies.
    #[serde(default)]
    pub last: bool,
}

fn default_redirect_status() -> u16 {
    302
}
fn yes() -> bool {
    true
}

/// The filter: the checked rules.
#[derive(Debug)]
pub struct Rewrite {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    config: RuleConfig,
    path: Option<PathRegex>,
    headers: Vec<(String, String)>,
    present: Vec<String>,
}

/// A rule's path regex, with a set of capture locations reused from request to request (an
/// instance runs one hook at a time).
#[derive(Debug)]
struct PathRegex {
    regex: Regex,
    locations: RefCell<CaptureLocations>,
}

impl Filter for Rewrite {
    type Config = Config;

    fn new(config: Config) -> Result<Rewrite, String> {
        if config.rules.is_empty() {
            return Err("no rules".into());
        }
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| Rule::new(rule).map_err(|e| format!("rules[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Rewrite { rules })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        for rule in &self.rules {
            let Some(groups) = rule.matches(request) else {
                continue;
            };
            if let Some(reply) = rule.apply(request, &groups) {
                return reply.into();
            }
            if rule.config.last {
                break;
            }
        }
        Action::Continue
    }
}

/// What a path regex captured: one owned copy of the path (the request may change
/// meanwhile), and the rule's regex and capture locations, borrowed while the rule applies.
#[derive(Debug, Default)]
struct Groups<'r> {
    path: String,
    captured: Option<(&'r Regex, RefMut<'r, CaptureLocations>)>,
}

impl Groups<'_> {
    /// The text of group `index`, if it took part in the match.
    fn get(&self, index: usize) -> Option<&str> {
        let (start, end) = self.captured.as_ref()?.1.get(index)?;
        self.path.get(start..end)
    }

    /// The text of the group named `name`, if it took part in the match.
    fn named(&self, name: &str) -> Option<&str> {
        let (regex, _) = self.captured.as_ref()?;
        let index = regex.capture_names().position(|n| n == Some(name))?;
        self.get(index)
    }
}

impl Rule {
    fn new(config: RuleConfig) -> Result<Rule, String> {
        let path = config
            .path
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| format!("path: {e}"))?
            .map(|regex| PathRegex {
                locations: RefCell::new(regex.capture_locations()),
                regex,
            });
        if path.is_none() && (has_group_ref(&config.rewrite) || has_group_ref(&config.redirect)) {
            return Err("rewrite and redirect can use $groups only with a path regex".into());
        }
        // A rewrite may start with a group that holds the slash (`$1` for `^(/.*)$`).
        if let Some(value) = &config.rewrite
            && !value.starts_with(['/', '$'])
        {
            return Err(format!("rewrite {value:?} must start with / or a $group"));
        }
        for (key, value) in [
            ("strip_prefix", &config.strip_prefix),
            ("add_prefix", &config.add_prefix),
        ] {
            if let Some(value) = value
                && !value.starts_with('/')
            {
                return Err(format!("{key} {value:?} must start with /"));
            }
        }
        if !matches!(config.redirect_status, 301 | 302 | 303 | 307 | 308) {
            return Err(format!(
                "redirect_status {} is not a redirect (301, 302, 303, 307, 308)",
                config.redirect_status
            ));
        }
        if let Some(host) = &config.host
            && (host.is_empty() || host.bytes().any(|b| b.is_ascii_control() || b == b' '))
        {
            return Err(format!("host {host:?} is not valid"));
        }
        for method in &config.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("method {method:?} must be upper-case, like GET"));
            }
        }
        let headers = config
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let present = config
            .present
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        Ok(Rule {
            config,
            path,
            headers,
            present,
        })
    }

    /// The path's groups if every condition holds.
    fn matches(&self, request: &Request) -> Option<Groups<'_>> {
        let methods = &self.config.methods;
        if !methods.is_empty() && !methods.iter().any(|m| m == request.method()) {
            return None;
        }
        if !self
            .headers
            .iter()
            .all(|(n, v)| request.header(n) == Some(v))
        {
            return None;
        }
        if !self
            .present
            .iter()
            .all(|n| request.header_bytes(n).is_some())
        {
            return None;
        }
        let Some(path_regex) = &self.path else {
            return Some(Groups::default());
        };
        let path = request.path();
        let mut locations = path_regex.locations.borrow_mut();
        path_regex.regex.captures_read(&mut locations, path)?;
        Some(Groups {
            path: path.to_owned(),
            captured: Some((&path_regex.regex, locations)),
        })
    }

    /// Applies the actions; a redirect is returned as the reply.
    fn apply(&self, request: &mut Request, groups: &Groups<'_>) -> Option<Reply> {
        let c = &self.config;
        if let Some(template) = &c.rewrite {
            let path = expand(template, groups);
            // A group that did not hold the leading slash still gives a valid path.
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            request.set_path(path);
        }
        if let Some(prefix) = &c.strip_prefix {
            let path = request.path();
            let prefix = prefix.trim_end_matches('/');
            if let Some(rest) = path.strip_prefix(prefix)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                let rest = if rest.is_empty() { "/" } else { rest }.to_owned();
                request.set_path(rest);
            }
        }
        if let Some(prefix) = &c.add_prefix {
            let joined = format!("{}{}", prefix.trim_end_matches('/'), request.path());
            request.set_path(joined);
        }
        if let Some(host) = &c.host {
            request.set_header("host", host);
        }
        if !c.query_remove.is_empty() || !c.query_set.is_empty() {
            let query = edit_query(request.query(), &c.query_remove, &c.query_set);
            request.set_query(query);
        }
        let template = c.redirect.as_ref()?;
        let mut location = expand(template, groups);
        if c.redirect_keep_query
            && let Some(query) = request.query()
        {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(query);
        }
        Some(Reply::new(c.redirect_status).header("location", location))
    }
}

fn has_group_ref(template: &Option<String>) -> bool {
    template.as_deref().is_some_and(|t| t.contains('$'))
}

/// Fills `$1`, `${1}`, `$name` and `${name}` from the groups; `$$` is a literal `$`. A
/// group that did not take part in the match is empty.
fn expand(template: &str, groups: &Groups<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (name, after) = match rest.strip_prefix('{') {
            Some(braced) => match braced.split_once('}') {
                Some((name, after)) => (name, after),
                None => ("", rest),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        if name.is_empty() {
            out.push('$');
            continue;
        }
        let value = match name.parse::<usize>() {
            Ok(index) => groups.get(index),
            Err(_) => groups.named(name),
        };
        out.push_str(value.unwrap_or(""));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The query with `remove` dropped and `set` replacing or adding parameters; `None` if
/// nothing is left. Untouched parameters keep their encoding and order.
fn edit_query(
    query: Option<&str>,
    remove: &[String],
    set: &BTreeMap<String, String>,
) -> Option<String> {
    let mut pairs: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = decode(pair.split_once('=').map_or(*pair, |(k, _)| k));
            !remove.contains(&key) && !set.contains_key(&key)
        })
        .map(str::to_owned)
        .collect();
    for (key, value) in set {
        pairs.push(format!("{}={}", encode(key), encode(value)));
    }
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `+` and `%XX`; invalid escapes stay as written.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

weir_plugin::export_filter!(Rewrite);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{Harness, TestRequest};

    use super::Rewrite;

    fn rewrite(config: &str) -> Harness<Rewrite> {
        Harness::new(config).expect("valid config")
    }

    #[test]
    fn a_regex_rewrite_uses_numbered_and_named_groups() {
        let r = rewrite(
            r#"
[[rules]]
path = '^/v1/(?P<kind>users|orders)/(\d+)$'
rewrite = '/${kind}/$2'
"#,
        );
        let out = r.request(TestRequest::get("/v1/users/7?x=1")).forwarded();
        assert_eq!(
            (out.path.as_str(), out.query.as_deref()),
            ("/users/7", Some("x=1"))
        );
        let untouched = r.request(TestRequest::get("/v2/users/7")).forwarded();
        assert_eq!(untouched.path, "/v2/users/7");

        let leading_group = rewrite("[[rules]]\npath = '^/p/(.*)$'\nrewrite = '$1'");
        let out = leading_group
            .request(TestRequest::get("/p/a/b"))
            .forwarded();
        assert_eq!(
            out.path, "/a/b",
            "a slash is put in front when the group has none"
        );
    }

    #[test]
    fn prefixes_strip_at_segment_boundaries_and_add() {
        let r = rewrite(
            r#"
[[rules]]
strip_prefix = "/api/"
add_prefix = "/internal"
"#,
        );
        assert_eq!(
            r.request(TestRequest::get("/api/a/b")).forwarded().path,
            "/internal/a/b"
        );
        assert_eq!(
            r.request(TestRequest::get("/api")).forwarded().path,
            "/internal/"
        );
        assert_eq!(
            r.request(TestRequest::get("/apix/a")).forwarded().path,
            "/internal/apix/a"
        );
    }

    #[test]
    fn conditions_must_all_hold_and_rules_chain_until_last() {
        let r = rewrite(
            r#"
[[rules]]
methods = ["POST"]
headers = { "x-canary" = "1" }
present = ["x-user"]
host = "canary.internal"
last = true

[[rules]]
query_remove = ["debug"]
query_set = { v = "2 b", mode = "x" }
"#,
        );
        let canary = TestRequest::new("POST", "/?debug=1")
            .header("X-Canary", "1")
            .header("x-user", "a");
        let out = r.request(canary).forwarded();
        assert_eq!(out.header_value("host"), Some("canary.internal"));
        assert_eq!(
            out.query.as_deref(),
            Some("debug=1"),
            "last stops the second rule"
        );

        let plain = TestRequest::new("POST", "/?debug=1&keep=%20&v=1").header("x-canary", "1");
        let out = r.request(plain).forwarded();
        assert_eq!(out.header_value("host"), None);
        assert_eq!(out.query.as_deref(), Some("keep=%20&mode=x&v=2%20b"));
    }

    #[test]
    fn redirects_fill_groups_keep_the_query_and_use_the_status() {
        let r = rewrite(
            r#"
[[rules]]
path = '^/old/(.*)$'
redirect = 'https://new.example/$1'
redirect_status = 308

[[rules]]
path = '^/bare$'
redirect = '/elsewhere?from=bare'
"#,
        );
        let reply = r.request(TestRequest::get("/old/a/b?q=1")).reply();
        assert_eq!(reply.status, 308);
        assert_eq!(
            reply.header_value("location"),
            Some("https://new.example/a/b?q=1")
        );
        let reply = r.request(TestRequest::get("/bare?x=y")).reply();
        assert_eq!(reply.status, 302);
        assert_eq!(
            reply.header_value("location"),
            Some("/elsewhere?from=bare&x=y")
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_index() {
        let cases = [
            ("rules = []", "no rules"),
            ("[[rules]]\npath = '('", "rules[0]: path"),
            ("[[rules]]\nrewrite = '/$1'", "only with a path regex"),
            ("[[rules]]\nadd_prefix = 'x'", "must start with /"),
            (
                "[[rules]]\npath = '(.*)'\nrewrite = 'x$1'",
                "must start with / or a $group",
            ),
            (
                "[[rules]]\nredirect = '/a'\nredirect_status = 200",
                "not a redirect",
            ),
            ("[[rules]]\nmethods = ['get']", "upper-case"),
            ("[[rules]]\nnope = 1", "unknown field"),
        ];
        for (config, want) in cases {
            let err = Harness::<Rewrite>::new(config).expect_err(config);
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
