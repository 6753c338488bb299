//! The route table: matches a request's host, path, method, headers and query to a route.
//! Pure, no I/O.
//!
//! Precedence, the way nginx and Envoy choose a virtual host before a location:
//! 1. routes whose `host` equals the request host, then routes with a wildcard host
//!    (`*.example.com`, longest suffix first), then routes with no `host`;
//! 2. within each group, the most specific path first: an exact `path`, then a
//!    `path_regex`, then the longest `path_prefix` (a plain string prefix, as in nginx
//!    `location /api` and Envoy `prefix`: `/api` also matches `/apiary`);
//! 3. among equal paths, the route with more conditions (`methods`, each `headers` and
//!    `query` condition) first;
//! 4. then the route written first in the file.
//!
//! A route matches only if every condition it has holds. `shadowed` finds the routes that
//! can never match: because one before them in this order takes every request they would
//! (for a `path_regex` before them, decided on automata by `cover`: only where certain), or
//! because their `methods` name none weir routes (`[]`, or only `CONNECT`, which weir
//! answers itself before routing: it opens no tunnels).

mod cover;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use http::{HeaderMap, Method, Request};

use crate::config::{Condition, Pattern, RouteConfig};

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

/// How a route matches the path.
#[derive(Debug)]
enum PathSpec {
    Exact(String),
    Regex(Pattern),
    Prefix(String),
}

impl PathSpec {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathSpec::Exact(exact) => path == exact,
            PathSpec::Regex(pattern) => pattern.matches(path),
            PathSpec::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }

    /// Sorts more specific first: exact, regex, then longer prefixes.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathSpec::Exact(_) => (0, std::cmp::Reverse(0)),
            PathSpec::Regex(_) => (1, std::cmp::Reverse(0)),
            PathSpec::Prefix(prefix) => (2, std::cmp::Reverse(prefix.len())),
        }
    }

    /// A path this matches, known without an automaton: a prefix or an exact path is one.
    fn literal(&self) -> Option<&str> {
        match self {
            PathSpec::Exact(path) | PathSpec::Prefix(path) => Some(path),
            PathSpec::Regex(_) => None,
        }
    }

    /// This path as an automaton, for [`Known::path_covers`]; `None` if it cannot be built
    /// within `cover`'s bounds.
    fn dfa(&self) -> Option<cover::Dfa> {
        cover::Dfa::new(match self {
            PathSpec::Exact(exact) => cover::Path::Exact(exact),
            PathSpec::Regex(pattern) => cover::Path::Regex(pattern.source()),
            PathSpec::Prefix(prefix) => cover::Path::Prefix(prefix),
        })
    }
}

/// What `shadowed` learns of one host group's paths, each worked out the first time a pair
/// needs it: a path's automaton and one path it matches.
struct Known<'e> {
    entries: &'e [Entry],
    dfas: Vec<OnceCell<Option<cover::Dfa>>>,
    witnesses: Vec<OnceCell<Option<String>>>,
}

impl<'e> Known<'e> {
    fn new(entries: &'e [Entry]) -> Known<'e> {
        Known {
            entries,
            dfas: entries.iter().map(|_| OnceCell::new()).collect(),
            witnesses: entries.iter().map(|_| OnceCell::new()).collect(),
        }
    }

    fn dfa(&self, i: usize) -> Option<&cover::Dfa> {
        self.dfas[i]
            .get_or_init(|| self.entries[i].path.dfa())
            .as_ref()
    }

    fn witness(&self, i: usize) -> Option<&str> {
        if let Some(literal) = self.entries[i].path.literal() {
            return Some(literal);
        }
        self.witnesses[i]
            .get_or_init(|| self.dfa(i)?.witness())
            .as_deref()
    }

    /// Whether every path entry `later` matches, entry `earlier` matches too. For a regex
    /// this is decided on the automata (`cover`), and is `false` where that is not certain;
    /// a path of the later one's that the regex does not match answers first, cheaply (most
    /// pairs of routes have nothing to do with each other). (A regex is never asked about
    /// an exact path: exact paths sort first, so a regex never stands before one.)
    fn path_covers(&self, earlier: usize, later: usize) -> bool {
        match (&self.entries[earlier].path, &self.entries[later].path) {
            (PathSpec::Prefix(p), PathSpec::Prefix(q) | PathSpec::Exact(q)) => q.starts_with(p),
            (PathSpec::Exact(a), PathSpec::Exact(b)) => a == b,
            (PathSpec::Regex(a), PathSpec::Regex(b)) if a == b => true,
            (PathSpec::Regex(pattern), _) => {
                if self
                    .witness(later)
                    .is_some_and(|path| !pattern.matches(path))
                {
                    return false;
                }
                match (self.dfa(earlier), self.dfa(later)) {
                    (Some(mine), Some(theirs)) => cover::covers(mine, theirs),
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// Why a route can never match (`Router::shadowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// This route, before it in precedence (for the same hosts), takes every request it
    /// would.
    ShadowedBy(RouteId),
    /// `methods = []`: it names no method, so no request matches (leaving `methods` out is
    /// what matches every method).
    NoMethod,
    /// Its `methods` name only `CONNECT`, which weir answers itself (400: a reverse proxy
    /// opens no tunnels) before any route is chosen. (An HTTP/2 WebSocket's extended
    /// CONNECT is routed as the `GET` it stands for.)
    OnlyConnect,
}

#[derive(Debug)]
struct Entry {
    path: PathSpec,
    methods: Option<Vec<Method>>,
    headers: Vec<Condition>,
    query: Vec<Condition>,
    route: RouteId,
}

impl Entry {
    fn conditions(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len() + self.query.len()
    }

    /// Whether no request can match this whatever comes before it: its `methods` leave no
    /// method weir routes.
    fn unreachable(&self) -> Option<Unreachable> {
        match self.methods.as_deref() {
            Some([]) => Some(Unreachable::NoMethod),
            Some(methods) if methods.iter().all(|m| *m == Method::CONNECT) => {
                Some(Unreachable::OnlyConnect)
            }
            _ => None,
        }
    }

    /// Whether every request this matches, `other` meets `other`'s conditions too: its
    /// methods, headers and query (the path is [`Known::path_covers`]'s). `CONNECT` in a
    /// `methods` list counts for nothing: no CONNECT request reaches the router.
    fn conditions_covered_by(&self, other: &Entry) -> bool {
        let routed = |m: &&Method| **m != Method::CONNECT;
        other.methods.as_ref().is_none_or(|theirs| {
            self.methods
                .as_ref()
                .is_some_and(|mine| mine.iter().filter(routed).all(|m| theirs.contains(m)))
        }) && other.headers.iter().all(|c| self.headers.contains(c))
            && other.query.iter().all(|c| self.query.contains(c))
    }
}

/// The parts of a request the table matches, with its query parsed once, when a route asks.
struct Asked<'r> {
    path: &'r str,
    method: &'r Method,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    params: OnceLock<Vec<(Cow<'r, str>, Cow<'r, str>)>>,
}

impl Asked<'_> {
    fn matches(&self, entry: &Entry) -> bool {
        entry.path.matches(self.path)
            && entry
                .methods
                .as_ref()
                .is_none_or(|m| m.contains(self.method))
            && entry.headers.iter().all(|c| {
                c.test.passes(
                    self.headers
                        .get_all(c.name.as_str())
                        .iter()
                        .map(|v| v.as_bytes()),
                )
            })
            && (entry.query.is_empty() || {
                let params = self.params.get_or_init(|| {
                    form_urlencoded::parse(self.query.unwrap_or("").as_bytes()).collect()
                });
                entry.query.iter().all(|c| {
                    c.test.passes(
                        params
                            .iter()
                            .filter(|(name, _)| *name == c.name.as_str())
                            .map(|(_, value)| value.as_bytes()),
                    )
                })
            })
    }
}

impl Router {
    /// Builds the table from validated routes (hosts already lower-case).
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (i, r) in routes.iter().enumerate() {
            let path = match (&r.path_exact, &r.path_regex) {
                (Some(exact), _) => PathSpec::Exact(exact.clone()),
                (None, Some(pattern)) => PathSpec::Regex(pattern.clone()),
                (None, None) => PathSpec::Prefix(r.path_prefix.clone()),
            };
            let entry = Entry {
                path,
                methods: r.methods.clone(),
                headers: r.headers.clone(),
                query: r.query.clone(),
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
        let by_specificity = |entries: &mut Vec<Entry>| {
            entries.sort_by_key(|e| (e.path.rank(), std::cmp::Reverse(e.conditions())));
        };
        router.exact.values_mut().for_each(by_specificity);
        router
            .wildcard
            .iter_mut()
            .for_each(|(_, entries)| by_specificity(entries));
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        by_specificity(&mut router.any_host);
        router
    }

    /// Finds the route for a request. `host` must be lower-case, without port or trailing dot.
    pub fn route<B>(&self, host: Option<&str>, request: &Request<B>) -> Option<RouteId> {
        let asked = Asked {
            path: request.uri().path(),
            method: request.method(),
            headers: request.headers(),
            query: request.uri().query(),
            params: OnceLock::new(),
        };
        let pick = |entries: &[Entry]| entries.iter().find(|e| asked.matches(e)).map(|e| e.route);
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

    /// One line for each route of `routes` that can never match, saying why: the route that
    /// takes its requests, or its `methods` (`weir check` prints them; a generation logs
    /// them).
    pub fn shadow_warnings(&self, routes: &[RouteConfig]) -> Vec<String> {
        self.shadowed()
            .into_iter()
            .map(|(route, why)| {
                let name = &routes[route.0].name;
                match why {
                    Unreachable::ShadowedBy(by) => format!(
                        "route \"{name}\" can never match: route \"{}\", before it in precedence, takes every request it would",
                        routes[by.0].name
                    ),
                    Unreachable::NoMethod => format!(
                        "route \"{name}\" can never match: `methods = []` names no method (leave `methods` out to match every method)"
                    ),
                    Unreachable::OnlyConnect => format!(
                        "route \"{name}\" can never match: weir answers CONNECT itself (400: it opens no tunnels) before choosing a route"
                    ),
                }
            })
            .collect()
    }

    /// The routes that can never match, each with why: a route before it (in precedence
    /// order, for the same hosts) that takes every request it would, or its `methods`.
    pub fn shadowed(&self) -> Vec<(RouteId, Unreachable)> {
        let groups = self
            .exact
            .values()
            .chain(self.wildcard.iter().map(|(_, entries)| entries))
            .chain(std::iter::once(&self.any_host));
        let mut found = Vec::new();
        for entries in groups {
            let known = Known::new(entries);
            for (i, entry) in entries.iter().enumerate() {
                if let Some(why) = entry.unreachable() {
                    found.push((entry.route, why));
                    continue;
                }
                let by = entries[..i].iter().enumerate().find(|(j, earlier)| {
                    earlier.unreachable().is_none()
                        && entry.conditions_covered_by(earlier)
                        && known.path_covers(*j, i)
                });
                if let Some((_, by)) = by {
                    found.push((entry.route, Unreachable::ShadowedBy(by.route)));
                }
            }
        }
        found.sort_by_key(|(route, _)| route.0);
        found
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
            // Equal prefixes: the one with more conditions (a method list) first.
            (None, "POST", "/api/x", "api-writes"),
            (None, "GET", "/api/x", "api"),
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
            let request = Request::builder()
                .method(method.clone())
                .uri(*path)
                .body(())
                .expect("request");
            let got = router
                .route(*host, &request)
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
        let route = |host, method: Method, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request");
            router.route(host, &request)
        };
        assert_eq!(route(Some("a.com"), Method::GET, "/x"), Some(RouteId(0)));
        assert_eq!(route(Some("a.com"), Method::GET, "/y"), None);
        assert_eq!(route(Some("a.com"), Method::POST, "/x"), None);
        assert_eq!(route(Some("b.com"), Method::GET, "/x"), None);
        assert_eq!(route(None, Method::GET, "/x"), None);
    }

    const CONDITIONS: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "orders-v1"
path_prefix = "/orders"
cluster = "c"
[[routes]]
name = "orders-v2"
path_prefix = "/orders"
headers = [{ name = "API-Version", exact = "2" }]
cluster = "c"
[[routes]]
name = "orders-beta"
path_prefix = "/orders"
query = [{ name = "beta", present = true }, { name = "tier", regex = "gold|silver" }]
cluster = "c"
[[routes]]
name = "orders-one"
path_regex = "/orders/[0-9]+"
cluster = "c"
[[routes]]
name = "orders-exact"
path = "/orders/42"
cluster = "c"
[[routes]]
name = "mobile"
path_prefix = "/m"
headers = [{ name = "user-agent", regex = ".*Mobile.*" }, { name = "x-desktop", present = false }]
cluster = "c"
[[routes]]
name = "orders-again"
path_prefix = "/orders/"
headers = [{ name = "api-version", exact = "2" }, { name = "x-debug", present = true }]
cluster = "c"
[[routes]]
name = "never"
path = "/orders/42"
cluster = "c"
"#;

    #[test]
    fn conditions_and_precedence() {
        let config = parse(Path::new("t.toml"), CONDITIONS).expect("valid");
        let router = Router::new(&config.routes);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case<'_>] = &[
            ("/orders", &[], Some("orders-v1")),
            ("/orders", &[("api-version", "2")], Some("orders-v2")),
            ("/orders", &[("api-version", "3")], Some("orders-v1")),
            ("/orders?beta&tier=gold", &[], Some("orders-beta")),
            ("/orders?beta=1&tier=bronze", &[], Some("orders-v1")),
            ("/orders?tier=silver", &[], Some("orders-v1")),
            ("/orders?beta=&tier=gol%64", &[], Some("orders-beta")),
            ("/orders/7", &[("api-version", "2")], Some("orders-one")),
            ("/orders/7x", &[], Some("orders-v1")),
            ("/orders/42", &[], Some("orders-exact")),
            ("/m/x", &[("user-agent", "Foo Mobile Bar")], Some("mobile")),
            (
                "/m/x",
                &[("user-agent", "Foo Mobile"), ("x-desktop", "1")],
                None,
            ),
            ("/m/x", &[], None),
            (
                "/orders/x",
                &[("api-version", "2"), ("x-debug", "")],
                Some("orders-again"),
            ),
        ];
        for (target, headers, expect) in cases {
            let mut request = Request::builder().uri(*target);
            for (name, value) in *headers {
                request = request.header(*name, *value);
            }
            let request = request.body(()).expect("request");
            let got = router
                .route(None, &request)
                .map(|id| config.routes[id.0].name.as_str());
            assert_eq!(got, *expect, "{target} {headers:?}");
        }
        assert_eq!(shadowed(&config), [("never", "orders-exact".into())]);
    }

    #[test]
    fn duplicates_and_narrower_methods_after_a_catch_all_are_shadowed() {
        let config = parse(Path::new("t.toml"), ROUTES).expect("valid");
        assert_eq!(shadowed(&config), [("api-dup", "api".into())]);
    }

    /// Each unreachable route of `config`, with the route that shadows it or why.
    fn shadowed(config: &crate::config::Config) -> Vec<(&str, String)> {
        Router::new(&config.routes)
            .shadowed()
            .into_iter()
            .map(|(route, why)| {
                let why = match why {
                    Unreachable::ShadowedBy(by) => config.routes[by.0].name.clone(),
                    other => format!("{other:?}"),
                };
                (config.routes[route.0].name.as_str(), why)
            })
            .collect()
    }

    /// The config of `routes` (TOML `[[routes]]` tables, cluster `c`).
    fn with_routes(routes: &str) -> crate::config::Config {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n{routes}"
        );
        parse(Path::new("t.toml"), &text).expect("valid")
    }

    #[test]
    fn a_regex_shadows_a_later_route_only_where_it_takes_every_path() {
        let config = with_routes(
            r#"
[[routes]]
name = "api-regex"
path_regex = "/api/.*"
cluster = "c"

[[routes]]
name = "api-prefix"
path_prefix = "/api/"
cluster = "c"

[[routes]]
name = "v1-regex"
path_regex = "/api/v[0-9]+/.*"
cluster = "c"

[[routes]]
name = "ap"
path_prefix = "/ap"
cluster = "c"

[[routes]]
name = "letters"
path_regex = "/web/[a-z]*"
cluster = "c"

[[routes]]
name = "web"
path_prefix = "/web/"
cluster = "c"

[[routes]]
name = "api-get"
path_regex = "/api/.*"
methods = ["GET"]
cluster = "c"

[[routes]]
name = "api-post"
path_prefix = "/api/"
methods = ["POST"]
cluster = "c"
"#,
        );
        // `/api/.*` takes every `/api/...` path: the later prefix and regex under it. Not
        // `/ap` (`/apple`), and `/web/[a-z]*` not `/web/` (`/web/1`). `api-get`, a regex
        // with a condition, is tried before the regexes without (equal paths, more
        // conditions first), so it takes only GETs from `api-regex`; the POST prefix after
        // them both is `api-regex`'s.
        assert_eq!(
            shadowed(&config),
            [
                ("api-prefix", "api-regex".into()),
                ("v1-regex", "api-regex".into()),
                ("api-post", "api-regex".into()),
            ]
        );
    }

    #[test]
    fn routes_whose_methods_weir_never_routes_can_never_match() {
        let config = with_routes(
            r#"
[[routes]]
name = "none"
path_prefix = "/a"
methods = []
cluster = "c"

[[routes]]
name = "tunnel"
path_prefix = "/a"
methods = ["CONNECT"]
cluster = "c"

[[routes]]
name = "get-and-connect"
path_prefix = "/a"
methods = ["GET", "CONNECT"]
cluster = "c"

[[routes]]
name = "get"
path_prefix = "/a"
methods = ["GET"]
cluster = "c"

[[routes]]
name = "rest"
path_prefix = "/a"
cluster = "c"
"#,
        );
        // Neither `none` nor `tunnel` takes anything from the routes after them; CONNECT in
        // a list counts for nothing, so `get` is `get-and-connect`'s duplicate.
        assert_eq!(
            shadowed(&config),
            [
                ("none", "NoMethod".into()),
                ("tunnel", "OnlyConnect".into()),
                ("get", "get-and-connect".into()),
            ]
        );
        // What each means: no request the router is asked about matches either (a CONNECT
        // never is: `proxy` answers it 400 first).
        let router = Router::new(&config.routes);
        for method in [Method::GET, Method::POST, Method::PUT] {
            let request = Request::builder()
                .method(method.clone())
                .uri("/a")
                .body(())
                .expect("request");
            let got = router.route(None, &request).map(|id| id.0);
            assert!(got.is_none_or(|i| i >= 2), "{method}: {got:?}");
        }
    }
}
