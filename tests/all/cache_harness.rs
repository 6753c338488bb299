//! What the response cache's tests (`cache` and `cache_attacks`) share: an upstream that
//! records the head of every request it gets, weir's answers read with their `Cache-Status`
//! member, requests that say `Host: cache.test`, and the config of a weir in front of one
//! cluster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use weir_tests::scripted::Answer;
use weir_tests::{ClientBody, DEADLINE, Scripted};

/// The `Host` every request sends unless it names another: the keys are
/// `http://cache.test/PATH`.
pub(crate) const HOST: &str = "cache.test";

pub(crate) type HttpClient = Client<HttpConnector, ClientBody>;
pub(crate) type Head = http::request::Parts;

/// An upstream whose answers the test scripts, recording the head of every request.
pub(crate) struct Origin {
    server: Option<Scripted>,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Head>>>,
}

/// The path and query of a request as the upstream got it.
pub(crate) fn target(head: &Head) -> &str {
    head.uri.path_and_query().map_or("", |p| p.as_str())
}

/// A header of a request head as text ("" when absent).
pub(crate) fn header<'a>(head: &'a Head, name: &str) -> &'a str {
    head.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl Origin {
    /// Answers every request with `answer(head, n)`, `n` the number of requests for the same
    /// path and query before it.
    pub(crate) async fn start(
        answer: impl Fn(&Head, usize) -> Answer + Send + Sync + 'static,
    ) -> Origin {
        let seen: Arc<Mutex<Vec<Head>>> = Arc::default();
        let record = seen.clone();
        let server = Scripted::start(move |head| {
            let n = {
                let mut seen = record.lock().expect("seen");
                let n = seen.iter().filter(|p| target(p) == target(head)).count();
                seen.push(head.clone());
                n
            };
            answer(head, n)
        })
        .await;
        Origin {
            addr: server.addr,
            server: Some(server),
            seen,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests the upstream got for `path` (path and query), in order.
    pub(crate) fn requests(&self, path: &str) -> Vec<Head> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|p| target(p) == path)
            .cloned()
            .collect()
    }

    /// How many requests the upstream got for `path`.
    pub(crate) fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    /// Every request the upstream got, in order.
    pub(crate) fn all(&self) -> Vec<Head> {
        self.seen.lock().expect("seen").clone()
    }

    /// Stops the server. Connections to its address are refused from then on: the port is
    /// bound again (never listening) and held by the returned socket, so no other server
    /// started meanwhile can take it.
    pub(crate) async fn stop(&mut self) -> tokio::net::TcpSocket {
        drop(self.server.take());
        let deadline = Instant::now() + DEADLINE;
        loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            if socket.bind(self.addr).is_ok() {
                return socket;
            }
            assert!(
                Instant::now() < deadline,
                "{} stayed in use after the upstream stopped",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One answer weir gave.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let shown: String = text.chars().take(200).collect();
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field(
                "body",
                &format!("{shown}{}", if text.len() > 200 { "…" } else { "" }),
            )
            .finish()
    }
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response header as text ("" when absent).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// weir's member of `Cache-Status` (the last one naming weir), if there is one.
    pub(crate) fn weir_member(&self) -> Option<String> {
        let all: Vec<&str> = self
            .headers
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        all.join(", ")
            .split(',')
            .map(str::trim)
            .rfind(|m| m.starts_with("weir"))
            .map(str::to_owned)
    }

    /// weir's member of `Cache-Status`; panics if there is none.
    pub(crate) fn cache_status(&self) -> String {
        self.weir_member()
            .unwrap_or_else(|| panic!("no weir member in Cache-Status: {self:?}"))
    }

    /// weir's member of `Cache-Status`, "" when there is none (for messages).
    pub(crate) fn member(&self) -> String {
        self.weir_member().unwrap_or_default()
    }

    /// The parameters of weir's `Cache-Status` member, after its name.
    pub(crate) fn params(&self) -> Vec<String> {
        self.member()
            .split(';')
            .skip(1)
            .map(|p| p.trim().to_owned())
            .collect()
    }

    /// The value of `ttl` in weir's `Cache-Status` member.
    pub(crate) fn ttl(&self) -> Option<i64> {
        self.params()
            .iter()
            .find_map(|p| p.strip_prefix("ttl=").map(str::to_owned))
            .and_then(|t| t.parse().ok())
    }

    /// Answered from the store (fresh or stale): `hit`.
    pub(crate) fn is_hit(&self) -> bool {
        self.params().iter().any(|p| p == "hit")
    }

    /// Answered from the store while fresh: `hit` with no `detail`.
    pub(crate) fn is_fresh_hit(&self) -> bool {
        self.is_hit() && !self.params().iter().any(|p| p.starts_with("detail="))
    }

    /// Fetched and stored: `stored`.
    pub(crate) fn was_stored(&self) -> bool {
        self.params().iter().any(|p| p == "stored")
    }
}

/// `method url` with `headers` and `body` (and `Host: cache.test` unless `headers` name a
/// host), through `client`; an error if the exchange fails (weir closed the connection, say)
/// or has no answer before the deadline.
pub(crate) async fn try_request(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Result<Reply, String> {
    let mut builder = Request::builder().method(method).uri(url);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", HOST);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .map_err(|_| "no answer before the deadline".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.to_vec(),
    })
}

/// [`try_request`] without a body; panics if the exchange fails.
pub(crate) async fn request(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_request(client, method.clone(), url, headers, weir_tests::empty())
        .await
        .unwrap_or_else(|e| panic!("{method} {url} {headers:?}: {e}"))
}

/// A config: a proxy listener, an admin listener with `admin` added to its table, `server`
/// as the `[server]` table's lines, cluster `app` at `upstream`, and `routes`.
pub(crate) fn config(upstream: SocketAddr, admin: &str, server: &str, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"
{admin}

[server]
{server}

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]
connect_timeout = "1s"
{routes}"#,
        cache = crate::plugin_cache().display(),
    )
}

/// A catch-all route `name` to `app` with `lines` (its `cache`, `plugins`, ...).
pub(crate) fn route(name: &str, lines: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\ncluster = \"app\"\n{lines}\n")
}
