//! The route table: matches a request's host, path and method to a route. Pure, no I/O.
//!
//! Precedence, the way nginx and Envoy choose a virtual host before a location:
//! 1. routes whose `host` equals the request host, then routes with a wildcard host
//!    (`*.example.com`, longest suffix first), then routes with no `host`;
//! 2. within each group, the longest `path_prefix` (a plain string prefix, as in nginx
//!    `location /api` and Envoy `prefix`: `/api` also matches `/apiary`);
//! 3. among equal prefixes, the route written first in the file.
//!
//! A route matches only if its method list (when it has one) contains the request method.

use std::collections::HashMap;

use http::Method;

use crate::config::RouteConfig;

/// Index of a route in the configuration's route list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(pub usize);

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Entry>>,
    /// `(".example.com", entries)`, longest suffix first.
    wildcard: Vec<(String, Vec<Entry>)>,
    any_host: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    prefix: String,
    methods: Option<Vec<Method>>,
    route: RouteId,
}

impl Router {
    /// Builds the table from validated routes (hosts already lower-case).
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (i, r) in routes.iter().enumerate() {
            let entry = Entry {
                prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
                route: RouteId(i),
            };
            match r.host.as_deref() {
                None => router.any_host.push(entry),
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, entries)) => entries.push(entry),
                        None => router.wildcard.push((suffix.to_owned(), vec![entry])),
                    },
                    None => router.exact.entry(host.to_owned()).or_default().push(entry),
                },
            }
        }
        // Stable sorts keep file order among equals.
        let by_prefix =
            |entries: &mut Vec<Entry>| entries.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        router.exact.values_mut().for_each(by_prefix);
        router
            .wildcard
            .iter_mut()
            .for_each(|(_, entries)| by_prefix(entries));
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        by_prefix(&mut router.any_host);
        router
    }

    /// Finds the route for a request. `host` must be lower-case, without port or trailing dot.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<RouteId> {
        let pick = |entries: &[Entry]| {
            entries
                .iter()
                .find(|e| {
                    path.starts_with(&e.prefix)
                        && e.methods.as_ref().is_none_or(|m| m.contains(method))
                })
                .map(|e| e.route)
        };
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|entries| pick(entries)) {
                return Some(found);
            }
            for (suffix, entries) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(found) = pick(entries)
                {
                    return Some(found);
                }
            }
        }
        pick(&self.any_host)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    const ROUTES: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "catch-all"
cluster = "c"
[[routes]]
name = "api"
path_prefix = "/api"
cluster = "c"
[[routes]]
name = "api-v2"
path_prefix = "/api/v2"
cluster = "c"
[[routes]]
name = "api-writes"
path_prefix = "/api"
methods = ["POST", "PUT"]
cluster = "c"
[[routes]]
name = "api-host"
host = "api.example.com"
cluster = "c"
[[routes]]
name = "api-host-admin"
host = "api.example.com"
path_prefix = "/admin"
methods = ["GET"]
cluster = "c"
[[routes]]
name = "wild"
host = "*.example.com"
path_prefix = "/w"
cluster = "c"
[[routes]]
name = "wild-deeper"
host = "*.eu.example.com"
path_prefix = "/w"
cluster = "c"
[[routes]]
name = "api-dup"
path_prefix = "/api"
cluster = "c"
"#;

    #[test]
    fn routing_table() {
        let config = parse(Path::new("t.toml"), ROUTES).expect("valid");
        let router = Router::new(&config.routes);
        let cases: &[(Option<&str>, &str, &str, &str)] = &[
            (None, "GET", "/", "catch-all"),
            (None, "GET", "/api", "api"),
            (None, "GET", "/apiary", "api"),
            (None, "GET", "/api/v2/users", "api-v2"),
            (None, "GET", "/api/v1", "api"),
            // Equal prefixes: the first written wins, unless its method list excludes the request.
            (None, "POST", "/api/x", "api"),
            (Some("other.org"), "GET", "/api", "api"),
            (Some("api.example.com"), "GET", "/api", "api-host"),
            (Some("api.example.com"), "GET", "/admin/x", "api-host-admin"),
            (Some("api.example.com"), "DELETE", "/admin/x", "api-host"),
            (Some("x.example.com"), "GET", "/w/1", "wild"),
            (Some("a.b.example.com"), "GET", "/w/1", "wild"),
            (Some("x.eu.example.com"), "GET", "/w/1", "wild-deeper"),
            // A wildcard matches subdomains only, and falls back to host-less routes.
            (Some("example.com"), "GET", "/w/1", "catch-all"),
            (Some("x.example.com"), "GET", "/api", "api"),
        ];
        for (host, method, path, expect) in cases {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let got = router
                .route(*host, path, &method)
                .map(|id| config.routes[id.0].name.as_str());
            assert_eq!(got, Some(*expect), "{method} {host:?} {path}");
        }
    }

    #[test]
    fn no_match() {
        let config = parse(
            Path::new("t.toml"),
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[routes]]\nname = \"r\"\nhost = \"a.com\"\npath_prefix = \"/x\"\nmethods = [\"GET\"]\ncluster = \"c\"\n",
        )
        .expect("valid");
        let router = Router::new(&config.routes);
        assert_eq!(
            router.route(Some("a.com"), "/x", &Method::GET),
            Some(RouteId(0))
        );
        assert_eq!(router.route(Some("a.com"), "/y", &Method::GET), None);
        assert_eq!(router.route(Some("a.com"), "/x", &Method::POST), None);
        assert_eq!(router.route(Some("b.com"), "/x", &Method::GET), None);
        assert_eq!(router.route(None, "/x", &Method::GET), None);
    }
}
