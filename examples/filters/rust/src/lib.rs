//! guard: refuses clients from listed networks unless they show the bypass token, and tags
//! every response. The same filter exists in every language under `examples/filters/`; this
//! one uses weir's Rust SDK, so it is the shortest.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};
use weir_plugin::{Action, Filter, Hooks, Reply, Request, Response};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client networks (`address/prefix`) that need the token.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The bypass token.
    pub token: String,
    /// The request header that carries it.
    #[serde(default = "default_token_header")]
    pub token_header: String,
    /// The value of the `x-guard` response header.
    #[serde(default = "default_tag")]
    pub tag: String,
}

fn default_token_header() -> String {
    "x-guard-token".into()
}

fn default_tag() -> String {
    "rust".into()
}

/// An IP network: an address and how many leading bits must match.
#[derive(Debug)]
struct Network {
    addr: IpAddr,
    prefix: u32,
}

impl Network {
    fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Network { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let keep = |bits: u32, width: u32| {
            if bits == 0 {
                0
            } else {
                u128::MAX << (width - bits)
            }
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = keep(self.prefix, 32) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = keep(self.prefix, 128);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The configured filter.
#[derive(Debug)]
pub struct Guard {
    deny: Vec<Network>,
    /// The token's digest: comparing digests takes the same time however much matches.
    token: [u8; 32],
    token_header: String,
    tag: String,
}

impl Guard {
    /// Whether the client is in a denied network; an address that cannot be read is not
    /// trusted.
    fn denied(&self, client: &str) -> bool {
        match client.parse::<SocketAddr>() {
            Ok(addr) => {
                let ip = addr.ip().to_canonical();
                self.deny.iter().any(|n| n.contains(ip))
            }
            Err(_) => true,
        }
    }

    fn token_ok(&self, request: &Request) -> bool {
        request
            .header_bytes(&self.token_header)
            .is_some_and(|token| <[u8; 32]>::from(Sha256::digest(token)) == self.token)
    }
}

impl Filter for Guard {
    type Config = Config;

    fn new(config: Config) -> Result<Guard, String> {
        let mut deny = Vec::new();
        for (i, text) in config.deny.iter().enumerate() {
            let network = Network::parse(text)
                .ok_or_else(|| format!("deny[{i}]: {text:?} is not a network (address/prefix)"))?;
            deny.push(network);
        }
        if config.token.is_empty() {
            return Err("token: required, a non-empty string".into());
        }
        Ok(Guard {
            deny,
            token: Sha256::digest(config.token.as_bytes()).into(),
            token_header: config.token_header.to_ascii_lowercase(),
            tag: config.tag,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::BOTH
    }

    fn on_request(&self, request: &mut Request) -> Action {
        if self.denied(request.client_addr()) && !self.token_ok(request) {
            weir_plugin::log::info!("refused {}", request.client_addr());
            let body = r#"{"error":"client network not allowed"}"#;
            return Reply::new(403)
                .header("content-type", "application/json")
                .body(body)
                .into();
        }
        // The token never travels upstream.
        request.remove_header(&self.token_header);
        Action::Continue
    }

    fn on_response(&self, _request: &Request, response: &mut Response) -> Action {
        response.set_header("x-guard", &self.tag);
        Action::Continue
    }
}

weir_plugin::export_filter!(Guard);
