//! `key-auth`: lets a request through only with a known API key, in a header or a query
//! parameter, and tells the upstream which consumer it belongs to. See the README for every
//! key.
//!
//! Keys are kept as SHA-256 digests and looked up by digest, so the lookup's timing says
//! nothing about how much of a wrong key matched.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The request header that carries the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that may carry the key instead; `None` looks only at the header.
    #[serde(default)]
    pub query: Option<String>,
    /// The header the consumer's name is forwarded upstream in.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// Remove the key from the request before it goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Who may call, and with which keys.
    pub consumers: Vec<Consumer>,
}

/// One consumer and its keys.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// The name forwarded upstream.
    pub name: String,
    /// The keys that identify this consumer.
    pub keys: Vec<String>,
}

fn default_header() -> String {
    "x-api-key".into()
}
fn default_consumer_header() -> String {
    "x-consumer-id".into()
}
fn default_realm() -> String {
    "weir".into()
}
fn yes() -> bool {
    true
}

/// The filter: key digests → consumer names.
#[derive(Debug)]
pub struct KeyAuth {
    header: String,
    query: Option<String>,
    consumer_header: String,
    hide_credentials: bool,
    challenge: String,
    consumers: HashMap<[u8; 32], String>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Filter for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<KeyAuth, String> {
        if config.consumers.is_empty() {
            return Err("no consumers: every request would be refused".into());
        }
        let mut consumers = HashMap::new();
        for consumer in &config.consumers {
            if consumer.name.is_empty() || consumer.name.bytes().any(|b| b.is_ascii_control()) {
                return Err(format!("consumer name {:?} is not valid", consumer.name));
            }
            if consumer.keys.is_empty() {
                return Err(format!("consumer {:?} has no keys", consumer.name));
            }
            for key in &consumer.keys {
                if key.is_empty() {
                    return Err(format!("consumer {:?} has an empty key", consumer.name));
                }
                if let Some(other) = consumers.insert(digest(key), consumer.name.clone()) {
                    return Err(format!(
                        "a key of consumer {:?} is also a key of {other:?}",
                        consumer.name
                    ));
                }
            }
        }
        if config.realm.contains('"') || config.realm.contains('\\') {
            return Err("realm must not contain quotes or backslashes".into());
        }
        Ok(KeyAuth {
            header: config.header.to_ascii_lowercase(),
            query: config.query,
            consumer_header: config.consumer_header.to_ascii_lowercase(),
            hide_credentials: config.hide_credentials,
            challenge: format!("Key realm=\"{}\"", config.realm),
            consumers,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let from_header = request.header(&self.header).map(str::to_owned);
        let key = match (&from_header, &self.query) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(param)) => request.query_param(param),
            (None, None) => None,
        };
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return self.refuse("No API key found in request");
        };
        let Some(consumer) = self.consumers.get(&digest(&key)) else {
            weir_plugin::log::info!("invalid API key from {}", request.client_addr());
            return self.refuse("Invalid authentication credentials");
        };
        // Set, never append: a client cannot pose as a consumer by sending the header.
        request.set_header(&self.consumer_header, consumer);
        if self.hide_credentials {
            if from_header.is_some() {
                request.remove_header(&self.header);
            } else if let Some(param) = &self.query {
                let rest = strip_param(request.query().unwrap_or(""), param);
                request.set_query(rest);
            }
        }
        Action::Continue
    }
}

impl KeyAuth {
    fn refuse(&self, message: &str) -> Action {
        Reply::json(401, &serde_json::json!({ "message": message }))
            .header("www-authenticate", &self.challenge)
            .into()
    }
}

/// The query without parameter `name`; `None` if nothing is left.
fn strip_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && key != name
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

weir_plugin::export_filter!(KeyAuth);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{Harness, TestRequest};

    use super::KeyAuth;

    const CONFIG: &str = r#"
query = "api_key"

[[consumers]]
name = "alice"
keys = ["alice-key-1", "alice-key-2"]

[[consumers]]
name = "bob"
keys = ["bob-key"]
"#;

    fn auth() -> Harness<KeyAuth> {
        Harness::new(CONFIG).expect("valid config")
    }

    #[test]
    fn a_known_key_in_the_header_forwards_the_consumer_and_hides_the_key() {
        let forwarded = auth()
            .request(TestRequest::get("/").header("X-Api-Key", "alice-key-2"))
            .forwarded();
        assert_eq!(forwarded.header_value("x-consumer-id"), Some("alice"));
        assert_eq!(forwarded.header_value("x-api-key"), None);
    }

    #[test]
    fn a_key_in_the_query_works_and_is_removed_from_it() {
        let forwarded = auth()
            .request(TestRequest::get("/items?page=2&api_key=bob-key&sort=asc"))
            .forwarded();
        assert_eq!(forwarded.header_value("x-consumer-id"), Some("bob"));
        assert_eq!(forwarded.query.as_deref(), Some("page=2&sort=asc"));
        let only_key = auth()
            .request(TestRequest::get("/items?api_key=bob-key"))
            .forwarded();
        assert_eq!((only_key.path.as_str(), only_key.query), ("/items", None));
    }

    #[test]
    fn missing_and_wrong_keys_get_401_with_a_challenge() {
        for (request, message) in [
            (TestRequest::get("/"), "No API key found in request"),
            (
                TestRequest::get("/").header("x-api-key", ""),
                "No API key found in request",
            ),
            (
                TestRequest::get("/").header("x-api-key", "alice-key-3"),
                "Invalid authentication credentials",
            ),
        ] {
            let reply = auth().request(request).reply();
            assert_eq!(reply.status, 401);
            assert_eq!(
                reply.header_value("www-authenticate"),
                Some("Key realm=\"weir\"")
            );
            assert_eq!(reply.header_value("content-type"), Some("application/json"));
            let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
            assert_eq!(body["message"], message);
        }
    }

    #[test]
    fn a_client_cannot_pose_as_a_consumer() {
        let forwarded = auth()
            .request(
                TestRequest::get("/")
                    .header("x-consumer-id", "admin")
                    .header("x-api-key", "bob-key"),
            )
            .forwarded();
        let consumers: Vec<&str> = forwarded
            .headers
            .iter()
            .filter(|(n, _)| n == "x-consumer-id")
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .collect();
        assert_eq!(consumers, ["bob"]);
    }

    #[test]
    fn wrong_keys_are_logged_without_the_key() {
        let auth = auth();
        let _ = auth.request(TestRequest::get("/").header("x-api-key", "guess-123"));
        let logs = weir_plugin::testing::logs();
        assert_eq!(logs.len(), 1);
        assert!(!logs[0].1.contains("guess-123"), "{logs:?}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases = [
            ("consumers = []", "no consumers"),
            (
                "[[consumers]]\nname = \"a\"\nkeys = [\"k\"]\n[[consumers]]\nname = \"b\"\nkeys = [\"k\"]",
                "is also a key of",
            ),
            ("[[consumers]]\nname = \"a\"\nkeys = []", "has no keys"),
            ("header = \"x\"", "missing field `consumers`"),
        ];
        for (config, expected) in cases {
            let error = Harness::<KeyAuth>::new(config).err().unwrap_or_default();
            assert!(error.contains(expected), "{config}: {error}");
        }
    }
}
