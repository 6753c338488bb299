//! `jwt-auth`: lets a request through only with a valid JSON Web Token, and forwards chosen
//! claims upstream as headers. See the README for every key.
//!
//! Signatures are checked by `jsonwebtoken` on RustCrypto (pure Rust, so the plugin builds
//! for `wasm32-wasip2` with no C toolchain). Time claims (`exp`, `nbf`) are checked here,
//! against the host's clock, so the answer can name the reason and unit tests can move time.
//!
//! A refusal says *why* in `WWW-Authenticate` (RFC 6750 `error` and `error_description`),
//! never which key was tried or what it was, and is counted by reason, from a fixed set, in
//! `weir_plugin_<plugin>_refusals_total{reason="..."}` (weir:plugin 0.3.3).
//!
//! Each instance remembers the last `cache_size` tokens whose signature it verified, as
//! Envoy's `jwt_cache_config` does: a client sends the same token with every request, and
//! the signature and JSON decoding are most of a check. A remembered token still has its
//! time claims (`exp`, `nbf`) checked on every request; what else its claims say (issuer,
//! audience, required claims, the values forwarded) cannot change for the instance's life,
//! so it is worked out once, when the token is first verified ([`Checked`]).
//!
//! # Keys from a JWKS endpoint
//!
//! With `jwks_cluster`, keys also come from a JWK set served at `jwks_path` on that cluster
//! (granted in `NAME.toml`), fetched with an `outbound` request (weir:plugin 0.3.4). The set
//! is kept in `kv` with the time it was fetched, so one fetch serves every instance (and,
//! with a Redis store, every weir): an instance reads the shared copy when its own is older
//! than `jwks_refresh`, and fetches only when the shared copy is that old too. A token whose
//! `kid` no key has makes the set be fetched again at once (a key rotated in at the issuer),
//! at most once per [`REFETCH_AFTER`] per instance, so tokens with made-up `kid`s cannot
//! turn every request into a fetch. A fetch that fails keeps the keys held; with none, tokens
//! are refused as having no key, and the failure is logged when it starts and when it ends.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use weir_plugin::metrics::Counter;
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header that carries `Bearer TOKEN`.
    #[serde(default = "default_header")]
    pub header: String,
    /// A cookie that may carry the token instead, when the header is absent.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Algorithms accepted; a token signed with any other is refused. Defaults to the
    /// algorithms of the configured keys.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, like `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// Accepted issuers (`iss`); empty accepts any.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`); empty accepts any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims every token must carry.
    #[serde(default = "default_required")]
    pub required_claims: Vec<String>,
    /// Claim → request header it is forwarded upstream in.
    #[serde(default = "default_forward")]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the token's header (or cookie) before the request goes upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The keys tokens may be signed with (besides those from `jwks_cluster`).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Tokens with a verified signature each instance remembers; 0 verifies every time.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// A cluster serving a JWK set to take keys from (granted in `NAME.toml`).
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// The JWK set's path on `jwks_cluster`.
    #[serde(default = "default_jwks_path")]
    pub jwks_path: String,
    /// How old the fetched set may grow before it is fetched again, like `5m`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: String,
}

/// One verification key: exactly one of `secret`, `secret_base64`, `pem` or `jwks`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token's `kid`; a token with a `kid` only tries keys with it.
    #[serde(default)]
    pub kid: Option<String>,
    /// The algorithm this key verifies (`HS256`, `RS256`, `ES256`, `EdDSA`, ...). Not used
    /// for `jwks`, whose keys name their own.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// An HMAC secret, as text.
    #[serde(default)]
    pub secret: Option<String>,
    /// An HMAC secret, base64-encoded.
    #[serde(default)]
    pub secret_base64: Option<String>,
    /// A public key in PEM (RSA, EC or Ed25519).
    #[serde(default)]
    pub pem: Option<String>,
    /// A JWK set, as JSON text (`{"keys": [...]}`).
    #[serde(default)]
    pub jwks: Option<String>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_leeway() -> String {
    "0s".into()
}
fn default_required() -> Vec<String> {
    vec!["exp".into()]
}
fn default_forward() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".to_owned(), "x-consumer-id".to_owned())])
}
fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}
fn default_jwks_refresh() -> String {
    "5m".into()
}
fn default_cache_size() -> usize {
    1000
}
fn default_realm() -> String {
    "weir".into()
}

/// A key ready to verify with.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The filter.
#[derive(Debug)]
pub struct JwtAuth {
    header: String,
    cookie: Option<String>,
    /// The algorithms configured; `None`: any algorithm a key has (configured or fetched from
    /// the JWKS endpoint, whose keys are not known at configure).
    algorithms: Option<HashSet<Algorithm>>,
    leeway: u64,
    issuers: Vec<String>,
    audiences: Vec<String>,
    required: Vec<String>,
    forward: Vec<(String, String)>,
    strip_token: bool,
    realm: String,
    keys: Vec<Key>,
    /// Where keys beyond `keys` come from, if anywhere.
    jwks: Option<Jwks>,
    cache_size: usize,
    /// Tokens whose signature and claims verified, with what their claims say (see the
    /// module docs).
    verified: RefCell<weir_plugin::hash::HashMap<Token, Rc<Checked>>>,
    /// Refusals by reason; `None` if weir refused the declaration (logged at configure).
    refusals: Option<Counter>,
}

type Claims = serde_json::Map<String, Value>;

/// What a verified token's claims say, as each request needs it: the times it is valid
/// between, and the value forwarded for each of `forward`'s claims (`None`: the header is
/// removed). Made once a token's signature and every claim have been checked.
#[derive(Debug)]
struct Checked {
    /// `exp`, in seconds since the epoch.
    exp: Option<u64>,
    /// `nbf`, in seconds since the epoch.
    nbf: Option<u64>,
    forwarded: Vec<Option<String>>,
}

/// A JWKS endpoint and the keys last taken from it (see the module docs).
#[derive(Debug)]
struct Jwks {
    cluster: String,
    path: String,
    /// Milliseconds a fetched set serves before it is fetched again.
    refresh_ms: u64,
    held: RefCell<HeldKeys>,
}

/// The keys an instance holds from the JWKS endpoint.
#[derive(Debug, Default)]
struct HeldKeys {
    keys: Rc<Vec<Key>>,
    /// When the set was fetched (by any instance), in ms since the epoch; 0 if never.
    fetched_ms: u64,
    /// The set's text, to tell a changed set from the same one fetched again.
    text: String,
    /// When this instance last fetched because of an unknown `kid`.
    kid_fetch_ms: u64,
    /// When this instance's last fetch failed.
    failed_ms: u64,
    /// Whether the last fetch failed (logged on the change, not per request).
    failing: bool,
    /// Whether the set changed since [`Jwks::take_changed`] last asked.
    changed: bool,
}

/// The least time between fetches caused by unknown `kid`s, per instance.
const REFETCH_AFTER: Duration = Duration::from_secs(5);
/// The `kv` key of the shared copy: `FETCHED_MS\nJSON`.
const JWKS_KEY: &str = "jwks";

/// A token as the key of the verified-token cache. Compared eight bytes at a time: `==` on
/// strings calls wasi-libc's `memcmp`, which compares a byte per iteration, and a token is a
/// few hundred bytes compared on every request.
#[derive(Debug)]
struct Token(String);

/// A token's end is hashed, not the whole: the last bytes of a JWT are its signature's, which
/// differ between any two tokens an instance verified (the only ones it keeps). Hashing a
/// few hundred bytes in wasm was about 940 instructions a request. A token that ends as a kept
/// one but differs before (a forged payload under a copied signature) lands on it and is told
/// apart by [`Token::eq`], which compares the whole.
impl std::hash::Hash for Token {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        TokenText(&self.0).hash(state);
    }
}

/// A token as the request carries it, to look up a remembered [`Token`] without copying it:
/// hashed and compared as one.
#[derive(Debug)]
struct TokenText<'a>(&'a str);

impl std::hash::Hash for TokenText<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let bytes = self.0.as_bytes();
        state.write_usize(bytes.len());
        state.write(&bytes[bytes.len().saturating_sub(HASHED_END)..]);
    }
}

impl weir_plugin::hash::Equivalent<Token> for TokenText<'_> {
    fn equivalent(&self, key: &Token) -> bool {
        same_token(self.0.as_bytes(), key.0.as_bytes())
    }
}

/// How many bytes of a token's end [`Token`]'s hash reads: 32 base64url characters, 24 bytes
/// of signature.
const HASHED_END: usize = 32;

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        same_token(self.0.as_bytes(), other.0.as_bytes())
    }
}

/// Whether two tokens are the same bytes, compared eight at a time.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((a_words, a_tail), (b_words, b_tail)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    let word = |w: &[u8; 8]| u64::from_ne_bytes(*w);
    a_tail == b_tail && a_words.iter().zip(b_words).all(|(x, y)| word(x) == word(y))
}

impl Eq for Token {}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No token at all: RFC 6750 says the challenge carries no error code.
    Missing,
    /// A token that is not valid, and why.
    Invalid(Invalid),
}

/// Why a token is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    Malformed,
    Algorithm,
    NoKey,
    BadSignature,
    MissingClaim,
    ExpNotNumber,
    NbfNotNumber,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Invalid {
    /// The text of `error_description` and of the body's message.
    fn description(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed token",
            Invalid::Algorithm => "algorithm not accepted",
            Invalid::NoKey => "no key for this token",
            Invalid::BadSignature => "signature does not verify",
            Invalid::MissingClaim => "a required claim is missing",
            Invalid::ExpNotNumber => "exp is not a number",
            Invalid::NbfNotNumber => "nbf is not a number",
            Invalid::Expired => "token expired",
            Invalid::NotYetValid => "token not yet valid",
            Invalid::Issuer => "issuer not accepted",
            Invalid::Audience => "audience not accepted",
        }
    }
}

impl Refusal {
    /// The `reason` label of the refusals metric: a fixed set.
    fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid(why) => match why {
                Invalid::Malformed | Invalid::ExpNotNumber | Invalid::NbfNotNumber => "malformed",
                Invalid::Algorithm => "algorithm",
                Invalid::NoKey => "no_key",
                Invalid::BadSignature => "bad_signature",
                Invalid::MissingClaim => "missing_claim",
                Invalid::Expired => "expired",
                Invalid::NotYetValid => "not_yet_valid",
                Invalid::Issuer => "issuer",
                Invalid::Audience => "audience",
            },
        }
    }
}

impl Filter for JwtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<JwtAuth, String> {
        if config.keys.is_empty() && config.jwks_cluster.is_none() {
            return Err("no keys and no jwks_cluster: every token would be refused".into());
        }
        let jwks = match config.jwks_cluster {
            Some(cluster) => {
                let refresh = humantime::parse_duration(&config.jwks_refresh)
                    .map_err(|e| format!("jwks_refresh {:?}: {e}", config.jwks_refresh))?;
                if !config.jwks_path.starts_with('/') {
                    return Err(format!(
                        "jwks_path {:?} must start with /",
                        config.jwks_path
                    ));
                }
                Some(Jwks {
                    cluster,
                    path: config.jwks_path,
                    refresh_ms: refresh.as_millis() as u64,
                    held: RefCell::default(),
                })
            }
            None => None,
        };
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            load_key(key, &mut keys).map_err(|e| format!("keys[{i}]: {e}"))?;
        }
        let algorithms = match config.algorithms.is_empty() {
            true => None,
            false => Some(
                config
                    .algorithms
                    .iter()
                    .map(|a| parse_algorithm(a))
                    .collect::<Result<HashSet<_>, _>>()?,
            ),
        };
        let leeway = humantime::parse_duration(&config.leeway)
            .map_err(|e| format!("leeway {:?}: {e}", config.leeway))?;
        if config.realm.contains(['"', '\\']) {
            return Err("realm must not contain quotes or backslashes".into());
        }
        let mut forward = Vec::new();
        for (claim, header) in config.forward_claims {
            if header.is_empty() || !header.bytes().all(is_token_char) {
                return Err(format!(
                    "forward_claims.{claim}: {header:?} is not a header name"
                ));
            }
            forward.push((claim, header.to_ascii_lowercase()));
        }
        // A metric weir refuses (another plugin's name, say) costs the metric, not the check.
        let refusals = Counter::declare(
            "refusals",
            "Requests refused with 401, by reason: missing, malformed, algorithm, no_key, bad_signature, missing_claim, expired, not_yet_valid, issuer, audience.",
            &["reason"],
        )
        .map_err(|e| weir_plugin::log::warn!("jwt-auth: no refusals metric: {e}"))
        .ok();
        Ok(JwtAuth {
            header: config.header.to_ascii_lowercase(),
            cookie: config.cookie,
            algorithms,
            leeway: leeway.as_secs(),
            issuers: config.issuers,
            audiences: config.audiences,
            required: config.required_claims,
            forward,
            strip_token: config.strip_token,
            realm: config.realm,
            keys,
            jwks,
            cache_size: config.cache_size,
            verified: RefCell::default(),
            refusals,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let Some((token, from_header)) = self.token(request) else {
            return self.refuse(Refusal::Missing);
        };
        let checked = match self.verify(token) {
            Ok(checked) => checked,
            Err(refusal) => {
                weir_plugin::log::info!(
                    "token refused from {}: {}",
                    request.client_addr(),
                    refusal.label()
                );
                return self.refuse(refusal);
            }
        };
        for ((_, header), value) in self.forward.iter().zip(&checked.forwarded) {
            // Set or removed, never left as sent: a client cannot pose as a subject.
            match value {
                Some(value) => request.set_header(header, value),
                None => request.remove_header(header),
            }
        }
        if self.strip_token {
            if from_header {
                request.remove_header(&self.header);
            } else if let Some(name) = &self.cookie {
                match strip_cookie(request.header("cookie").unwrap_or(""), name) {
                    Some(rest) => request.set_header("cookie", rest),
                    None => request.remove_header("cookie"),
                }
            }
        }
        Action::Continue
    }
}

impl JwtAuth {
    /// The token and whether it came from the header (else the cookie).
    fn token<'r>(&self, request: &'r Request) -> Option<(&'r str, bool)> {
        if let Some(value) = request.header(&self.header) {
            let (scheme, token) = value.trim().split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| (token.trim(), true))
                .filter(|(t, _)| !t.is_empty());
        }
        let name = self.cookie.as_ref()?;
        let cookies = request.header("cookie")?;
        cookies.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some((v, false))
        })
    }

    /// Checks the signature and the claims, or only the time claims of a token this instance
    /// verified before. Returns what the claims say.
    fn verify(&self, token: &str) -> Result<Rc<Checked>, Refusal> {
        // Keys from the JWKS endpoint, refreshed when due; a changed set forgets the
        // tokens remembered as verified.
        let remote = match &self.jwks {
            Some(jwks) => {
                let keys = jwks.keys(now_ms(), None);
                if jwks.take_changed() {
                    self.verified.borrow_mut().clear();
                }
                keys
            }
            None => Rc::default(),
        };
        // Looked up as the request's own text: the token is copied only to be remembered.
        let remembered = self.verified.borrow().get(&TokenText(token)).cloned();
        if let Some(checked) = remembered {
            let now = now_secs();
            self.not_expired(checked.exp, now)?;
            self.already_valid(checked.nbf, now)?;
            return Ok(checked);
        }
        let claims = self.verify_signature(token, &remote)?;
        let checked = Rc::new(self.check_claims(&claims)?);
        if self.cache_size > 0 {
            let mut verified = self.verified.borrow_mut();
            if verified.len() >= self.cache_size {
                verified.clear();
            }
            verified.insert(Token(token.to_owned()), checked.clone());
        }
        Ok(checked)
    }

    /// Checks the signature against the keys that may have made it — the configured ones,
    /// then those from the JWKS endpoint, fetched again first if the token names a `kid`
    /// none has. Returns the claims.
    fn verify_signature(&self, token: &str, remote: &Rc<Vec<Key>>) -> Result<Claims, Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid(Invalid::Malformed))?;
        let mut remote = remote.clone();
        if let (Some(jwks), Some(kid)) = (&self.jwks, &header.kid) {
            let known = |keys: &[Key]| {
                self.keys
                    .iter()
                    .chain(keys)
                    .any(|k| k.kid.as_ref() == Some(kid))
            };
            if !known(&remote) {
                remote = jwks.keys(now_ms(), Some(kid));
                if jwks.take_changed() {
                    self.verified.borrow_mut().clear();
                }
            }
        }
        let accepted = if let Some(algorithms) = &self.algorithms {
            algorithms.contains(&header.alg)
        } else {
            self.keys
                .iter()
                .chain(remote.iter())
                .any(|k| k.algorithm == header.alg)
        };
        if !accepted {
            return Err(Refusal::Invalid(Invalid::Algorithm));
        }
        let mut validation = Validation::new(header.alg);
        // Time and audience are checked below, with the host's clock and our own messages.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let candidates = self.keys.iter().chain(remote.iter()).filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) | (None, _) => true,
                }
        });
        let mut claims = None;
        let mut any_key = false;
        for key in candidates {
            any_key = true;
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    _ => return Err(Refusal::Invalid(Invalid::Malformed)),
                },
            }
        }
        if !any_key {
            return Err(Refusal::Invalid(Invalid::NoKey));
        }
        claims.ok_or(Refusal::Invalid(Invalid::BadSignature))
    }

    /// Checks every claim, and returns what they say for later requests with the token.
    fn check_claims(&self, claims: &Claims) -> Result<Checked, Refusal> {
        for claim in &self.required {
            if !claims.contains_key(claim) {
                return Err(Refusal::Invalid(Invalid::MissingClaim));
            }
        }
        let now = now_secs();
        let seconds = |name: &str, not_number: Invalid| {
            claims
                .get(name)
                .map(|v| v.as_u64().ok_or(Refusal::Invalid(not_number)))
                .transpose()
        };
        let exp = seconds("exp", Invalid::ExpNotNumber)?;
        self.not_expired(exp, now)?;
        let nbf = seconds("nbf", Invalid::NbfNotNumber)?;
        self.already_valid(nbf, now)?;
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.issuers.iter().any(|i| i == iss)) {
                return Err(Refusal::Invalid(Invalid::Issuer));
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &str| self.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(Refusal::Invalid(Invalid::Audience));
            }
        }
        let forwarded = self
            .forward
            .iter()
            .map(|(claim, _)| claims.get(claim).and_then(claim_text))
            .collect();
        Ok(Checked {
            exp,
            nbf,
            forwarded,
        })
    }

    /// Refuses a token whose `exp`, give or take `leeway`, is past at `now` (seconds).
    fn not_expired(&self, exp: Option<u64>, now: u64) -> Result<(), Refusal> {
        match exp {
            Some(exp) if now >= exp.saturating_add(self.leeway) => {
                Err(Refusal::Invalid(Invalid::Expired))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a token whose `nbf`, give or take `leeway`, is still to come at `now`.
    fn already_valid(&self, nbf: Option<u64>, now: u64) -> Result<(), Refusal> {
        match nbf {
            Some(nbf) if now.saturating_add(self.leeway) < nbf => {
                Err(Refusal::Invalid(Invalid::NotYetValid))
            }
            _ => Ok(()),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Action {
        if let Some(refusals) = &self.refusals {
            refusals.inc(&[refusal.label()]);
        }
        let (challenge, message) = match refusal {
            Refusal::Missing => (
                format!("Bearer realm=\"{}\"", self.realm),
                "No token found in request",
            ),
            Refusal::Invalid(why) => (
                format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                    self.realm,
                    why.description()
                ),
                why.description(),
            ),
        };
        Reply::json(401, &serde_json::json!({ "message": message }))
            .header("www-authenticate", challenge)
            .into()
    }
}

impl Jwks {
    /// The keys to verify with at `now`: the instance's own if fresh; else the shared copy
    /// in `kv` if another instance fetched one since; else fetched now (and shared). `want`
    /// is a `kid` a token names and no key has: then a newer shared copy or a fetch is
    /// looked for even if the held keys are fresh. Unknown kids cause at most one fetch per
    /// [`REFETCH_AFTER`] per instance, and after a failed fetch the next waits as long.
    fn keys(&self, now: u64, want: Option<&str>) -> Rc<Vec<Key>> {
        let mut held = self.held.borrow_mut();
        let fresh = |fetched: u64| fetched > 0 && now.saturating_sub(fetched) < self.refresh_ms;
        let has = |keys: &[Key]| {
            want.is_none_or(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
        };
        if want.is_none() && fresh(held.fetched_ms) {
            return held.keys.clone();
        }
        // Unknown kids look further at most once per REFETCH_AFTER, store read included, so
        // invented kids cannot cost a store call each; a failing endpoint waits as long.
        let recent = |at: u64| at > 0 && now.saturating_sub(at) < REFETCH_AFTER.as_millis() as u64;
        if want.is_some() {
            if recent(held.kid_fetch_ms) {
                return held.keys.clone();
            }
            held.kid_fetch_ms = now;
        }
        if let Some((fetched, text)) = shared_copy()
            && fetched > held.fetched_ms
        {
            self.take(&mut held, fetched, text);
            if fresh(fetched) && has(&held.keys) {
                return held.keys.clone();
            }
        }
        if want.is_none() && recent(held.failed_ms) {
            return held.keys.clone();
        }
        match self.fetch() {
            Ok(text) => {
                let stored = format!("{now}\n{text}");
                // Kept well past its refresh, so a failing endpoint leaves the last set.
                let ttl = Duration::from_millis(self.refresh_ms.saturating_mul(10).max(60_000));
                if let Err(e) = weir_plugin::kv::set(JWKS_KEY, stored.as_bytes(), Some(ttl)) {
                    weir_plugin::log::warn!("jwt-auth: cannot share the JWK set in kv: {e}");
                }
                self.take(&mut held, now, text);
                if std::mem::take(&mut held.failing) {
                    weir_plugin::log::info!(
                        "jwt-auth: the JWK set is fetched from {} again",
                        self.cluster
                    );
                }
            }
            Err(why) => {
                held.failed_ms = now;
                if !std::mem::replace(&mut held.failing, true) {
                    weir_plugin::log::warn!(
                        "jwt-auth: cannot fetch the JWK set from {} {}: {why}; keeping the {} keys held",
                        self.cluster,
                        self.path,
                        held.keys.len()
                    );
                }
            }
        }
        held.keys.clone()
    }

    /// Makes `text` (fetched at `fetched`) the held set, if it parses.
    fn take(&self, held: &mut HeldKeys, fetched: u64, text: String) {
        held.fetched_ms = fetched;
        if text == held.text {
            return;
        }
        let mut keys = Vec::new();
        let entry = KeyConfig {
            jwks: Some(text.clone()),
            ..KeyConfig::default()
        };
        match load_key(&entry, &mut keys) {
            Ok(()) => {
                held.keys = Rc::new(keys);
                held.text = text;
                held.changed = true;
            }
            Err(e) => weir_plugin::log::warn!(
                "jwt-auth: the JWK set from {} {} is not usable: {e}; keeping the {} keys held",
                self.cluster,
                self.path,
                held.keys.len()
            ),
        }
    }

    /// The set's text from the endpoint.
    fn fetch(&self) -> Result<String, String> {
        let answer = weir_plugin::outbound::Call::get(&self.cluster, &self.path)
            .header("accept", "application/json")
            .send()
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("status {}", answer.status));
        }
        String::from_utf8(answer.body).map_err(|_| "the body is not UTF-8".to_owned())
    }

    /// Whether the held set changed since the last ask: a key that left the set must not
    /// keep verifying the tokens remembered as verified with it.
    fn take_changed(&self) -> bool {
        std::mem::take(&mut self.held.borrow_mut().changed)
    }
}

/// The shared copy of the set in `kv`: when it was fetched, and its text.
fn shared_copy() -> Option<(u64, String)> {
    let stored = weir_plugin::kv::get(JWKS_KEY).ok()??;
    let stored = String::from_utf8(stored).ok()?;
    let (fetched, text) = stored.split_once('\n')?;
    Some((fetched.parse().ok()?, text.to_owned()))
}

/// The host's clock, in whole seconds since the epoch (JWT's time claims' unit).
fn now_secs() -> u64 {
    weir_plugin::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn now_ms() -> u64 {
    weir_plugin::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Turns one `keys` entry into verification keys (a JWK set may hold several).
fn load_key(config: &KeyConfig, keys: &mut Vec<Key>) -> Result<(), String> {
    let given = [
        config.secret.is_some(),
        config.secret_base64.is_some(),
        config.pem.is_some(),
        config.jwks.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("give exactly one of secret, secret_base64, pem or jwks".into());
    }
    if let Some(jwks) = &config.jwks {
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("jwks: {e}"))?;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().or_else(|| config.kid.clone());
            let algorithm = match (&jwk.common.key_algorithm, &config.algorithm) {
                (Some(alg), _) => parse_algorithm(&alg.to_string())?,
                (None, Some(alg)) => parse_algorithm(alg)?,
                (None, None) => {
                    return Err(format!(
                        "jwks key {kid:?} has no \"alg\"; set algorithm for this entry"
                    ));
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwks key {kid:?}: {e}"))?;
            keys.push(Key {
                kid,
                algorithm,
                key,
            });
        }
        if set.keys.is_empty() {
            return Err("jwks has no keys".into());
        }
        return Ok(());
    }
    let algorithm = parse_algorithm(
        config
            .algorithm
            .as_deref()
            .ok_or("algorithm is required (HS256, RS256, ES256, EdDSA, ...)")?,
    )?;
    let hmac = matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let key = match (&config.secret, &config.secret_base64, &config.pem) {
        (Some(secret), _, _) if hmac => {
            if secret.len() < 32 {
                return Err("an HMAC secret must be at least 32 bytes".into());
            }
            DecodingKey::from_secret(secret.as_bytes())
        }
        (_, Some(b64), _) if hmac => {
            let key =
                DecodingKey::from_base64_secret(b64).map_err(|e| format!("secret_base64: {e}"))?;
            // Decoded, valid base64 is three bytes for every four characters of its text.
            if b64.trim_end_matches('=').len() * 3 / 4 < 32 {
                return Err(
                    "an HMAC secret must be at least 32 bytes (secret_base64 decodes to fewer)"
                        .into(),
                );
            }
            key
        }
        (_, _, Some(pem)) if !hmac => {
            let pem = pem.as_bytes();
            match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => DecodingKey::from_rsa_pem(pem),
            }
            .map_err(|e| format!("pem: {e}"))?
        }
        _ => {
            return Err(format!(
                "{algorithm:?} needs {}",
                if hmac {
                    "secret or secret_base64"
                } else {
                    "pem or jwks"
                }
            ));
        }
    };
    keys.push(Key {
        kid: config.kid.clone(),
        algorithm,
        key,
    });
    Ok(())
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    match algorithm {
        Algorithm::HS256
        | Algorithm::HS384
        | Algorithm::HS512
        | Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::EdDSA => Ok(algorithm),
        #[allow(unreachable_patterns, reason = "jsonwebtoken may add algorithms")]
        _ => Err(format!("algorithm {name:?} is not supported")),
    }
}

/// A claim as header text: strings as they are, numbers and booleans printed, anything
/// else as JSON. `None` for values that cannot be a header value.
fn claim_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!text.bytes().any(|b| b.is_ascii_control())).then_some(text)
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `Cookie` header without cookie `name`; `None` when nothing is left.
fn strip_cookie(cookies: &str, name: &str) -> Option<String> {
    let rest: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .filter(|pair| !pair.is_empty())
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

weir_plugin::export_filter!(JwtAuth);

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use weir_plugin::testing::{self, Harness, TestRequest};

    use super::{JwtAuth, Token};

    const SECRET: &str = "a-test-secret-that-is-long-enough!";

    fn now() -> u64 {
        weir_plugin::clock::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    /// The cache is looked up with the request's text: it must hash and compare as the
    /// remembered copy does, or every request would verify its token again.
    #[test]
    fn a_remembered_token_is_found_by_the_requests_text() {
        let mut verified = weir_plugin::hash::HashMap::default();
        let text = "header.payload.0123456789abcdefghijklmnopqrstuvwxyz-_ABCDEF";
        verified.insert(Token(text.to_owned()), 1);
        assert_eq!(verified.get(&super::TokenText(text)), Some(&1));
        // The same end (the hashed part) after another payload: found apart by the whole.
        let forged = "header.pAyload.0123456789abcdefghijklmnopqrstuvwxyz-_ABCDEF";
        assert_eq!(verified.get(&super::TokenText(forged)), None);
    }

    #[test]
    fn tokens_compare_by_every_byte() {
        let token = |t: &str| Token(t.to_owned());
        let base = "0123456789abcdefghij"; // two words and a four-byte tail
        assert_eq!(token(base), token(base));
        assert_ne!(token(base), token("0123456789abcdefghiJ")); // the tail
        assert_ne!(token(base), token("0123456X89abcdefghij")); // the first word
        assert_ne!(token(base), token("0123456789abcdeXghij")); // the second word
        assert_ne!(token(base), token("0123456789abcdefghi")); // the length
        assert_eq!(token(""), token(""));
        assert_eq!(token("12345678"), token("12345678"));
    }

    fn hs256(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
    }

    fn hmac_auth(extra: &str) -> Harness<JwtAuth> {
        Harness::new(&format!(
            "{extra}\n[[keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ))
        .expect("valid config")
    }

    fn bearer(token: &str) -> TestRequest {
        TestRequest::get("/").header("Authorization", &format!("Bearer {token}"))
    }

    fn challenge(reply: &weir_plugin::Reply) -> String {
        reply
            .header_value("www-authenticate")
            .expect("a challenge")
            .to_owned()
    }

    /// Each refusal is counted under its reason, from a fixed set.
    #[test]
    fn refusals_are_counted_by_reason() {
        let auth = hmac_auth("");
        auth.request(TestRequest::get("/")).reply();
        auth.request(TestRequest::get("/")).reply();
        auth.request(bearer("not.a.token")).reply();
        let expired = hs256(json!({"sub": "a", "exp": now() - 1}));
        auth.request(bearer(&expired)).reply();
        let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": now() + 60}),
            &other,
        )
        .expect("sign");
        auth.request(bearer(&forged)).reply();
        auth.request(bearer(&hs256(json!({"sub": "a", "exp": now() + 60}))))
            .forwarded();
        let count = |reason| testing::metric("refusals_total", &[("reason", reason)]);
        assert_eq!(count("missing"), Some(2.0));
        assert_eq!(count("malformed"), Some(1.0));
        assert_eq!(count("expired"), Some(1.0));
        assert_eq!(count("bad_signature"), Some(1.0));
        assert_eq!(count("issuer"), None);
        assert_eq!(testing::metric_errors(), 0);
    }

    #[test]
    fn a_valid_token_forwards_its_subject_and_replaces_a_spoofed_one() {
        let auth = hmac_auth("");
        let token = hs256(json!({"sub": "alice", "exp": now() + 60}));
        let forwarded = auth
            .request(bearer(&token).header("x-consumer-id", "mallory"))
            .forwarded();
        assert_eq!(forwarded.header_value("x-consumer-id"), Some("alice"));
        assert!(forwarded.header_value("authorization").is_some());
    }

    #[test]
    fn no_token_gets_a_bare_challenge() {
        let reply = hmac_auth("").request(TestRequest::get("/")).reply();
        assert_eq!(reply.status, 401);
        assert_eq!(challenge(&reply), "Bearer realm=\"weir\"");
    }

    #[test]
    fn expiry_and_not_before_are_checked_with_leeway_against_the_host_clock() {
        let auth = hmac_auth("leeway = \"30s\"");
        let token = hs256(json!({"sub": "a", "exp": now() + 10}));
        auth.request(bearer(&token)).forwarded();
        testing::advance(Duration::from_secs(35));
        auth.request(bearer(&token)).forwarded();
        testing::advance(Duration::from_secs(10));
        let reply = auth.request(bearer(&token)).reply();
        assert!(
            challenge(&reply)
                .contains("error=\"invalid_token\", error_description=\"token expired\""),
            "{}",
            challenge(&reply)
        );

        let early = hs256(json!({"exp": now() + 600, "nbf": now() + 100}));
        let reply = auth.request(bearer(&early)).reply();
        assert!(challenge(&reply).contains("token not yet valid"));
    }

    /// A remembered token skips the signature check and the claims that cannot change, but
    /// its expiry is checked on every request, and a token differing in its signature is
    /// verified on its own.
    #[test]
    fn remembered_tokens_still_have_their_claims_checked() {
        for extra in ["", "cache_size = 0", "cache_size = 1"] {
            testing::reset();
            let auth = hmac_auth(extra);
            let token = hs256(json!({"sub": "a", "exp": now() + 10}));
            auth.request(bearer(&token)).forwarded();
            auth.request(bearer(&token)).forwarded();
            let mut forged = token.clone().into_bytes();
            let at = forged.len() - 10;
            forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).expect("ASCII");
            let reply = auth.request(bearer(&forged)).reply();
            assert!(
                challenge(&reply).contains("signature does not verify"),
                "{extra}: {}",
                challenge(&reply)
            );
            testing::advance(Duration::from_secs(11));
            let reply = auth.request(bearer(&token)).reply();
            assert!(challenge(&reply).contains("token expired"), "{extra}");
        }
    }

    /// The verified-token cache hashes only a token's end: a remembered token's signature under
    /// another payload (the same end, another subject) must not pass as remembered.
    #[test]
    fn a_remembered_signature_under_another_payload_is_refused() {
        let auth = hmac_auth("");
        let token = hs256(json!({"sub": "alice", "exp": now() + 60}));
        auth.request(bearer(&token)).forwarded();
        let other = hs256(json!({"sub": "eve42", "exp": now() + 60}));
        let signature = token.rsplit_once('.').expect("three parts").1;
        let unsigned = other.rsplit_once('.').expect("three parts").0;
        let forged = format!("{unsigned}.{signature}");
        assert_eq!(
            forged.len(),
            token.len(),
            "the same length, so the same hash"
        );
        let reply = auth.request(bearer(&forged)).reply();
        assert_eq!(reply.status, 401);
        assert!(
            challenge(&reply).contains("signature does not verify"),
            "{}",
            challenge(&reply)
        );
        auth.request(bearer(&token)).forwarded();
    }

    #[test]
    fn a_wrong_signature_an_unlisted_algorithm_and_garbage_are_refused_without_naming_the_key() {
        let auth = hmac_auth("");
        let claims = json!({"exp": now() + 60});
        let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &other).expect("sign");
        let reply = auth.request(bearer(&forged)).reply();
        assert!(challenge(&reply).contains("signature does not verify"));
        assert!(!String::from_utf8_lossy(&reply.body).contains(SECRET));

        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        let reply = auth.request(bearer(&hs512)).reply();
        assert!(challenge(&reply).contains("algorithm not accepted"));

        let reply = auth.request(bearer("not.a.jwt")).reply();
        assert!(challenge(&reply).contains("malformed token"));
        let reply = auth
            .request(TestRequest::get("/").header("authorization", "Basic abc"))
            .reply();
        assert_eq!(challenge(&reply), "Bearer realm=\"weir\"");
    }

    #[test]
    fn issuer_audience_and_required_claims() {
        let auth = hmac_auth(
            "issuers = [\"https://id.example\"]\naudiences = [\"api\"]\nrequired_claims = [\"exp\", \"sub\"]",
        );
        let exp = now() + 60;
        let good = hs256(
            json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": ["x", "api"]}),
        );
        auth.request(bearer(&good)).forwarded();
        let cases = [
            (
                json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "api"}),
                "issuer not accepted",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "web"}),
                "audience not accepted",
            ),
            (
                json!({"exp": exp, "iss": "https://id.example", "aud": "api"}),
                "a required claim is missing",
            ),
        ];
        // Twice each: a token refused for a claim is not remembered, so it is refused again
        // (a remembered token's issuer, audience and required claims are not looked at).
        for (claims, why) in cases {
            let token = hs256(claims);
            for attempt in ["first", "again"] {
                let reply = auth.request(bearer(&token)).reply();
                assert!(
                    challenge(&reply).contains(why),
                    "{why}, {attempt}: {}",
                    challenge(&reply)
                );
            }
        }
    }

    #[test]
    fn rsa_ecdsa_and_eddsa_keys_from_pem_and_a_jwk_set() {
        let rsa_pub = include_str!("../testdata/rsa.pub");
        let ec_pub = include_str!("../testdata/ec256.pub");
        let ed_pub = include_str!("../testdata/ed25519.pub");
        let config = format!(
            r#"
[[keys]]
kid = "rsa"
algorithm = "RS256"
pem = """{rsa_pub}"""
[[keys]]
kid = "pss"
algorithm = "PS256"
pem = """{rsa_pub}"""
[[keys]]
algorithm = "ES256"
pem = """{ec_pub}"""
[[keys]]
algorithm = "EdDSA"
pem = """{ed_pub}"""
"#
        );
        let auth: Harness<JwtAuth> = Harness::new(&config).expect("valid config");
        let claims = json!({"sub": "k", "exp": now() + 60});
        let signers = [
            (
                Algorithm::RS256,
                Some("rsa"),
                EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.key")),
            ),
            (
                Algorithm::PS256,
                Some("pss"),
                EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.key")),
            ),
            (
                Algorithm::ES256,
                None,
                EncodingKey::from_ec_pem(include_bytes!("../testdata/ec256.key")),
            ),
            (
                Algorithm::EdDSA,
                None,
                EncodingKey::from_ed_pem(include_bytes!("../testdata/ed25519.key")),
            ),
        ];
        for (alg, kid, key) in signers {
            let mut header = Header::new(alg);
            header.kid = kid.map(str::to_owned);
            let token = jsonwebtoken::encode(&header, &claims, &key.expect("key")).expect("sign");
            let forwarded = auth.request(bearer(&token)).forwarded();
            assert_eq!(
                forwarded.header_value("x-consumer-id"),
                Some("k"),
                "{alg:?}"
            );
        }

        let jwks = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"YS10ZXN0LXNlY3JldC10aGF0LWlzLWxvbmctZW5vdWdoIQ"}]}"#;
        let auth: Harness<JwtAuth> =
            Harness::new(&format!("[[keys]]\njwks = '{jwks}'\n")).expect("valid jwks");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        auth.request(bearer(&token)).forwarded();
        header.kid = Some("k2".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        let reply = auth.request(bearer(&token)).reply();
        assert!(challenge(&reply).contains("no key for this token"));
    }

    #[test]
    fn a_cookie_token_is_used_and_stripped_and_claims_are_forwarded_as_text() {
        let auth = hmac_auth(
            "cookie = \"session\"\nstrip_token = true\n[forward_claims]\nsub = \"x-user\"\nadmin = \"x-admin\"\nmissing = \"x-missing\"",
        );
        let token = hs256(json!({"sub": "bob", "admin": true, "exp": now() + 60}));
        // The second time the token is remembered: its claims are forwarded the same.
        for (spoofed, verified) in [("x-user", "first"), ("x-admin", "remembered")] {
            let forwarded = auth
                .request(
                    TestRequest::get("/")
                        .header("cookie", &format!("theme=dark; session={token}"))
                        .header("x-missing", "spoofed")
                        .header(spoofed, "spoofed"),
                )
                .forwarded();
            assert_eq!(forwarded.header_value("x-user"), Some("bob"), "{verified}");
            assert_eq!(
                forwarded.header_value("x-admin"),
                Some("true"),
                "{verified}"
            );
            assert_eq!(forwarded.header_value("x-missing"), None, "{verified}");
            assert_eq!(
                forwarded.header_value("cookie"),
                Some("theme=dark"),
                "{verified}"
            );
        }
    }

    /// JWK sets of HS256 keys `k1` ([`SECRET`]) and `k2` (a second secret), as issuers rotate
    /// them (`testdata/rotation/`, shared with `tests/all/outbound.rs`).
    const K1: &str = include_str!("../testdata/rotation/k1.json");
    const K1_K2: &str = include_str!("../testdata/rotation/k1-k2.json");
    const K2: &str = include_str!("../testdata/rotation/k2.json");

    fn signed_by(kid: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        let secret = match kid {
            "k1" => SECRET,
            _ => "a-second-secret-rotated-in-later!!",
        };
        let claims = json!({"sub": kid, "exp": now() + 600});
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn jwks_auth() -> Harness<JwtAuth> {
        Harness::new("jwks_cluster = \"idp\"\njwks_path = \"/keys\"\njwks_refresh = \"1m\"\n")
            .expect("valid config")
    }

    fn fetches() -> usize {
        testing::outbound_calls()
            .iter()
            .filter(|c| c.cluster == "idp" && c.path == "/keys")
            .count()
    }

    #[test]
    fn keys_come_from_the_jwks_endpoint_and_a_rotated_in_kid_is_fetched_at_once() {
        // The harness starts from a fresh mock host: stubs come after it.
        let auth = jwks_auth();
        testing::stub_outbound("idp", "GET", "/keys", 200, &[], K1.as_bytes());
        let forwarded = auth.request(bearer(&signed_by("k1"))).forwarded();
        assert_eq!(forwarded.header_value("x-consumer-id"), Some("k1"));
        auth.request(bearer(&signed_by("k1"))).forwarded();
        assert_eq!(fetches(), 1, "fresh keys are not fetched again");
        // The issuer rotates k2 in: a token naming it makes the set be fetched now.
        testing::stub_outbound("idp", "GET", "/keys", 200, &[], K1_K2.as_bytes());
        let forwarded = auth.request(bearer(&signed_by("k2"))).forwarded();
        assert_eq!(forwarded.header_value("x-consumer-id"), Some("k2"));
        assert_eq!(fetches(), 2);
        // Made-up kids do not turn every request into a fetch.
        for _ in 0..5 {
            let reply = auth.request(bearer(&signed_by("k9"))).reply();
            assert!(challenge(&reply).contains("no key for this token"));
        }
        assert_eq!(fetches(), 2, "at most one fetch per 5 s");
        testing::advance(Duration::from_secs(5));
        auth.request(bearer(&signed_by("k9"))).reply();
        assert_eq!(fetches(), 3);
        let shared = weir_plugin::kv::get("jwks")
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&shared).contains("\"k2\""),
            "the set is shared in kv for the other instances"
        );
    }

    #[test]
    fn a_key_removed_from_the_set_stops_verifying_after_the_refresh() {
        let auth = jwks_auth();
        testing::stub_outbound("idp", "GET", "/keys", 200, &[], K1_K2.as_bytes());
        let token = signed_by("k1");
        auth.request(bearer(&token)).forwarded();
        testing::stub_outbound("idp", "GET", "/keys", 200, &[], K2.as_bytes());
        testing::advance(Duration::from_secs(61));
        let reply = auth.request(bearer(&token)).reply();
        assert_eq!(
            reply.status, 401,
            "a remembered token is verified again with the new set"
        );
    }

    #[test]
    fn an_endpoint_that_fails_leaves_the_held_keys_and_logs_once() {
        let auth = jwks_auth();
        testing::stub_outbound("idp", "GET", "/keys", 200, &[], K1.as_bytes());
        auth.request(bearer(&signed_by("k1"))).forwarded();
        testing::fail_outbound(
            "idp",
            "GET",
            "/keys",
            weir_plugin::outbound::OutboundError::Timeout,
        );
        for _ in 0..3 {
            testing::advance(Duration::from_secs(61));
            auth.request(bearer(&signed_by("k1"))).forwarded();
        }
        let warnings = testing::logs()
            .iter()
            .filter(|(_, line)| line.contains("cannot fetch the JWK set"))
            .count();
        assert_eq!(warnings, 1);
        // With no keys held at all, tokens are refused (not let through).
        let fresh = jwks_auth();
        testing::fail_outbound(
            "idp",
            "GET",
            "/keys",
            weir_plugin::outbound::OutboundError::Timeout,
        );
        let reply = fresh.request(bearer(&signed_by("k1"))).reply();
        assert_eq!(reply.status, 401);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("keys = []", "no keys"),
            (
                "[[keys]]\nalgorithm = \"HS256\"\nsecret = \"short\"",
                "at least 32 bytes",
            ),
            // 31 bytes, base64-encoded.
            (
                "[[keys]]\nalgorithm = \"HS256\"\nsecret_base64 = \"YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYQ==\"",
                "at least 32 bytes",
            ),
            (
                "[[keys]]\nalgorithm = \"RS256\"\nsecret = \"a-test-secret-that-is-long-enough!\"",
                "needs pem or jwks",
            ),
            (
                "[[keys]]\nalgorithm = \"XX1\"\nsecret = \"s\"",
                "unknown algorithm",
            ),
            ("[[keys]]\nalgorithm = \"RS256\"\npem = \"nope\"", "pem"),
            ("[[keys]]\nalgorithm = \"HS256\"", "exactly one of"),
        ];
        for (config, want) in cases {
            let err = Harness::<JwtAuth>::new(config).expect_err(config);
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
