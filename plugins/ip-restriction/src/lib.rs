//! `ip-restriction`: lets a request through only from the client addresses its `allow` and
//! `deny` lists permit, IPv4 and IPv6. See the README for every key.
//!
//! The address is the one weir trusts (`Request::client_addr`): the peer, or behind a proxy
//! in `[server] trusted_proxies`, the client that proxy names in `X-Forwarded-For` — weir
//! has resolved it before any plugin runs, and a client cannot forge it. An IPv4-mapped IPv6
//! address (`::ffff:192.0.2.7`, what a dual-stack socket reports for an IPv4 client) is that
//! IPv4 address, for the address and for the rules alike, so one IPv4 rule covers a client
//! however it arrived.
//!
//! `deny` wins over `allow`; with an `allow` list, anything not in it is refused. An address
//! weir gives that cannot be read is refused too: this plugin fails closed.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use weir_plugin::metrics::Counter;
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// If not empty, the only addresses let through: CIDR ranges or single addresses.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses refused, even if `allow` lists them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The status a refused request is answered with.
    #[serde(default = "default_status")]
    pub status: u16,
    /// The `message` of the refusal's JSON body.
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_status() -> u16 {
    403
}
fn default_message() -> String {
    "Your IP address is not allowed".into()
}

/// The filter: the parsed ranges and the refusal, serialised once.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    status: u16,
    body: Vec<u8>,
    refusals: Counter,
}

/// Why a request was refused, the label of the refusals metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The address is in `deny`.
    Denied,
    /// There is an `allow` list and the address is not in it.
    NotAllowed,
    /// weir gave an address that is not `ip:port`.
    NoAddress,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "deny",
            Refusal::NotAllowed => "allow",
            Refusal::NoAddress => "address",
        }
    }
}

impl Filter for IpRestriction {
    type Config = Config;

    fn new(config: Config) -> Result<IpRestriction, String> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err("neither allow nor deny lists an address: every request would pass".into());
        }
        if !(400..=599).contains(&config.status) {
            return Err(format!(
                "status {} is not a 4xx or 5xx status: a refused client must see a refusal",
                config.status
            ));
        }
        let allow = parse_list(&config.allow, "allow")?;
        let deny = parse_list(&config.deny, "deny")?;
        let body = serde_json::to_vec(&serde_json::json!({ "message": config.message }))
            .map_err(|e| format!("message: {e}"))?;
        let refusals = Counter::declare(
            "refusals",
            "Requests refused, by the rule that refused them: deny (in the deny list), allow (not in the allow list), address (no readable client address).",
            &["rule"],
        )?;
        Ok(IpRestriction {
            allow,
            deny,
            status: config.status,
            body,
            refusals,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        match self.check(request.client_addr()) {
            Ok(()) => Action::Continue,
            Err(refusal) => {
                self.refusals.inc(&[refusal.label()]);
                weir_plugin::log::debug!("refused {} ({})", request.client_addr(), refusal.label());
                Reply::new(self.status)
                    .header("content-type", "application/json")
                    .body(self.body.clone())
                    .into()
            }
        }
    }
}

impl IpRestriction {
    /// Whether `client` (weir's `ip:port`) may pass: `deny` first, then `allow`.
    fn check(&self, client: &str) -> Result<(), Refusal> {
        let ip = client_ip(client).ok_or(Refusal::NoAddress)?;
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

/// The IP address of weir's client address — `1.2.3.4:5678`, `[2001:db8::1]:5678`, or with
/// port 0 for a client a trusted proxy named — an IPv4-mapped IPv6 address made IPv4.
fn client_ip(client: &str) -> Option<IpAddr> {
    let ip = match client.parse::<SocketAddr>() {
        Ok(address) => address.ip(),
        Err(_) => client.parse::<IpAddr>().ok()?,
    };
    Some(ip.to_canonical())
}

/// The ranges of list `key`, each checked: an entry is a CIDR range (`10.0.0.0/8`,
/// `2001:db8::/32`) or one address (`192.0.2.7`, `2001:db8::1`).
fn parse_list(entries: &[String], key: &str) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_range(entry).map_err(|why| format!("{key}[{i}]: {entry:?} {why}")))
        .collect()
}

fn parse_range(entry: &str) -> Result<IpNet, String> {
    let net = match entry.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match entry.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(
                    "is not an IP address or CIDR range (like 192.0.2.0/24, 2001:db8::/32 or 192.0.2.7)"
                        .into(),
                );
            }
        },
    };
    // A typo such as 10.1.0.0/8 for 10.1.0.0/16 would let in far more than meant: refused
    // rather than widened silently.
    if net.trunc() != net {
        return Err(format!(
            "has bits set past its /{} prefix: write the range as {} (or the address alone)",
            net.prefix_len(),
            net.trunc()
        ));
    }
    Ok(canonical(net))
}

/// An IPv4-mapped IPv6 range (within `::ffff:0:0/96`) as the IPv4 range it maps, since
/// client addresses are matched as IPv4 too.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(v4) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(v4);
    }
    net
}

weir_plugin::export_filter!(IpRestriction);

#[cfg(test)]
mod tests {
    use weir_plugin::Hooks;
    use weir_plugin::testing::{self, Harness, TestRequest};

    use super::{IpRestriction, client_ip};

    const CONFIG: &str = r#"
allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"]
deny = ["10.6.6.0/24", "2001:db8:bad::/48"]
"#;

    fn from(filter: &Harness<IpRestriction>, client: &str) -> u16 {
        match filter.request(TestRequest::get("/").client(client)) {
            testing::RequestOutcome::Forwarded(_) => 200,
            testing::RequestOutcome::Responded(reply) => reply.status,
        }
    }

    #[test]
    fn allow_lets_in_only_what_it_lists_and_deny_wins() {
        let filter = Harness::<IpRestriction>::new(CONFIG).expect("valid config");
        for (client, status) in [
            ("10.1.2.3:50000", 200),
            ("192.0.2.7:443", 200),
            ("192.0.2.8:443", 403),
            ("203.0.113.7:0", 403),
            ("10.6.6.6:50000", 403),
            ("10.6.7.1:50000", 200),
            ("[2001:db8::1]:50000", 200),
            ("[2001:db8:bad::1]:50000", 403),
            ("[2001:db9::1]:50000", 403),
            ("[::1]:50000", 403),
            ("198.51.100.20:0", 200),
            ("198.51.101.20:0", 403),
        ] {
            assert_eq!(from(&filter, client), status, "{client}");
        }
        assert_eq!(filter.hooks(), Hooks::REQUEST);
    }

    #[test]
    fn ipv4_mapped_clients_match_as_ipv4() {
        let filter = Harness::<IpRestriction>::new(CONFIG).expect("valid config");
        assert_eq!(from(&filter, "[::ffff:10.1.2.3]:50000"), 200);
        assert_eq!(from(&filter, "[::ffff:10.6.6.6]:50000"), 403, "denied");
        assert_eq!(from(&filter, "[::ffff:203.0.113.7]:0"), 403);
        assert_eq!(client_ip("[::ffff:1.2.3.4]:80"), "1.2.3.4".parse().ok());
    }

    #[test]
    fn deny_alone_refuses_only_what_it_lists() {
        let filter =
            Harness::<IpRestriction>::new("deny = [\"203.0.113.0/24\", \"2001:db8::/32\"]")
                .expect("valid config");
        assert_eq!(from(&filter, "203.0.113.7:1"), 403);
        assert_eq!(from(&filter, "[2001:db8::7]:1"), 403);
        assert_eq!(from(&filter, "198.51.100.1:1"), 200);
        assert_eq!(from(&filter, "[2001:db9::7]:1"), 200);
    }

    #[test]
    fn client_addresses_in_every_form_weir_writes() {
        for (client, ip) in [
            ("127.0.0.1:50000", Some("127.0.0.1")),
            ("203.0.113.7:0", Some("203.0.113.7")),
            ("[::1]:50000", Some("::1")),
            ("[fe80::1%2]:50000", Some("fe80::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("192.0.2.1", Some("192.0.2.1")),
            ("", None),
            ("unknown", None),
        ] {
            assert_eq!(
                client_ip(client),
                ip.and_then(|ip| ip.parse().ok()),
                "{client}"
            );
        }
    }

    #[test]
    fn an_unreadable_address_is_refused() {
        let filter =
            Harness::<IpRestriction>::new("deny = [\"203.0.113.0/24\"]").expect("valid config");
        assert_eq!(from(&filter, ""), 403, "fails closed");
        assert_eq!(
            testing::metric("refusals_total", &[("rule", "address")]),
            Some(1.0)
        );
    }

    #[test]
    fn the_refusal_has_the_configured_status_and_message() {
        let default = Harness::<IpRestriction>::new(CONFIG).expect("valid config");
        let reply = default
            .request(TestRequest::get("/").client("203.0.113.7:0"))
            .reply();
        assert_eq!(reply.status, 403);
        assert_eq!(reply.header_value("content-type"), Some("application/json"));
        assert_eq!(
            reply.body,
            br#"{"message":"Your IP address is not allowed"}"#.as_slice()
        );
        let custom = Harness::<IpRestriction>::new(
            "deny = [\"203.0.113.7\"]\nstatus = 404\nmessage = \"no \\\"such\\\" thing\"",
        )
        .expect("valid config");
        let reply = custom
            .request(TestRequest::get("/").client("203.0.113.7:0"))
            .reply();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, br#"{"message":"no \"such\" thing"}"#.as_slice());
    }

    #[test]
    fn refusals_are_counted_by_rule() {
        let filter = Harness::<IpRestriction>::new(CONFIG).expect("valid config");
        for client in ["10.6.6.6:1", "203.0.113.7:1", "203.0.113.8:1", "10.0.0.1:1"] {
            let _ = filter.request(TestRequest::get("/").client(client));
        }
        assert_eq!(
            testing::metric("refusals_total", &[("rule", "deny")]),
            Some(1.0)
        );
        assert_eq!(
            testing::metric("refusals_total", &[("rule", "allow")]),
            Some(2.0)
        );
        assert_eq!(testing::metric_errors(), 0);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("", "neither allow nor deny lists an address"),
            (
                "allow = [\"10.0.0.0/8\", \"10.0.0.300/8\"]",
                "allow[1]: \"10.0.0.300/8\" is not an IP address or CIDR range",
            ),
            (
                "deny = [\"2001:db8::/129\"]",
                "deny[0]: \"2001:db8::/129\" is not an IP address or CIDR range",
            ),
            ("deny = [\"example.com\"]", "is not an IP address"),
            ("deny = [\" 10.0.0.1\"]", "is not an IP address"),
            (
                "allow = [\"10.1.0.0/8\"]",
                "allow[0]: \"10.1.0.0/8\" has bits set past its /8 prefix: write the range as 10.0.0.0/8",
            ),
            (
                "deny = [\"10.0.0.0/8\"]\nstatus = 200",
                "status 200 is not a 4xx or 5xx status",
            ),
            ("denied = [\"10.0.0.0/8\"]", "unknown field `denied`"),
        ];
        for (config, expected) in cases {
            let error = Harness::<IpRestriction>::new(config)
                .err()
                .unwrap_or_default();
            assert!(error.contains(expected), "{config}: {error}");
        }
    }
}
