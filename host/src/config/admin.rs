//! The `[admin]` section: where the admin listener binds, who may use it, and which host
//! names it answers to.
//!
//! Who may use it is one of two things. Either every request carries a bearer token, read
//! here from the file `token_file` or the environment variable `token_env`, or nobody is
//! asked (`open = true`), which only a loopback address allows: on any other address the
//! admin would be open to the network. A loopback admin with neither is open too, as it was
//! before tokens existed, and weir warns at startup (`crate::admin::service`).
//!
//! The token is read while validating, so `weir check` reports a missing or unusable one
//! with the line of `token_file` or `token_env`. Only its SHA-256 digest is kept: the config
//! is printed by `GET /config` and compared on every reload, and neither needs the token.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::model::RawAdmin;
use super::validate::{AdminConfig, Checker, is_dns_name};

/// The fewest characters an admin token may have: 16 random characters are beyond guessing
/// over the network; a word like `admin` or `changeme` is not.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Who may use the admin listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAuth {
    /// `open = true` on a loopback address: no token is asked for.
    Open,
    /// A loopback address with neither a token nor `open`: open, and weir warns at startup.
    OpenByDefault,
    /// Every request but the dashboard page must carry `Authorization: Bearer TOKEN`.
    Bearer(AdminToken),
}

/// The admin token, as its digest and where it came from. It prints (`Debug`, and `GET
/// /config`) as its source only.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    from: TokenSource,
    digest: [u8; 32],
}

/// Where the admin token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// `token_file`, resolved against the config file's folder.
    File(PathBuf),
    /// `token_env`: the environment variable's name.
    Env(String),
}

impl AdminToken {
    /// The token `secret`, read from `from`.
    pub fn new(from: TokenSource, secret: &[u8]) -> AdminToken {
        AdminToken {
            from,
            digest: Sha256::digest(secret).into(),
        }
    }

    /// Where the token was read from.
    pub fn source(&self) -> &TokenSource {
        &self.from
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    ///
    /// Both sides are SHA-256 digests, so they are the same length whatever a client sends,
    /// and every byte is compared: the time taken tells a client nothing about how much of
    /// its guess was right. (Hand-written rather than the `subtle` crate's `ConstantTimeEq`:
    /// an XOR fold over 32 bytes is all it would do here, behind an optimisation barrier.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        let difference = presented
            .iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Serialize for AdminToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.from.serialize(s)
    }
}

/// Checks `[admin]`, whose `address` has already been parsed.
pub(super) fn admin(
    check: &mut Checker<'_>,
    raw: &RawAdmin,
    address: SocketAddr,
    base_dir: &Path,
) -> AdminConfig {
    let token = match (&raw.token_file, &raw.token_env) {
        (Some(_), Some(env)) => {
            check.error(env, "admin: give token_file or token_env, not both".into());
            None
        }
        (Some(file), None) => token_from_file(check, file, base_dir),
        (None, Some(env)) => token_from_env(check, env),
        (None, None) => None,
    };
    let has_token = raw.token_file.is_some() || raw.token_env.is_some();
    let loopback = address.ip().is_loopback();
    let auth = match (&raw.open, has_token) {
        (Some(open), true) if *open.get_ref() => {
            check.error(
                open,
                "admin: open = true and a token contradict each other; remove one".into(),
            );
            AdminAuth::Open
        }
        (Some(open), false) if *open.get_ref() && !loopback => {
            check.error(
                open,
                format!(
                    "admin: open = true is allowed only on a loopback address (127.0.0.1 or \
                     [::1]); {address} can be reached from other machines, so set token_file \
                     or token_env"
                ),
            );
            AdminAuth::Open
        }
        (Some(open), false) if *open.get_ref() => AdminAuth::Open,
        (Some(open), false) => {
            check.error(
                open,
                "admin: open = false needs a token: set token_file or token_env".into(),
            );
            AdminAuth::Open
        }
        (None, false) if !loopback => {
            check.error(
                &raw.address,
                format!(
                    "admin address {address} is not a loopback address, so the admin needs a \
                     token: set token_file or token_env (or bind 127.0.0.1)"
                ),
            );
            AdminAuth::Open
        }
        (None, false) => AdminAuth::OpenByDefault,
        // A token that could not be read has been reported; what stands in for it is
        // never used, as the config is refused.
        (_, true) => token.map_or(AdminAuth::Open, AdminAuth::Bearer),
    };
    let hosts = raw
        .hosts
        .iter()
        .flatten()
        .filter_map(|h| host_name(check, h))
        .collect();
    AdminConfig {
        address,
        auth,
        hosts,
    }
}

fn token_from_file(
    check: &mut Checker<'_>,
    file: &Spanned<PathBuf>,
    base_dir: &Path,
) -> Option<AdminToken> {
    let path = base_dir.join(file.get_ref());
    let what = format!("admin token_file \"{}\"", path.display());
    match std::fs::read(&path) {
        Ok(bytes) => checked_token(check, file, &what, &bytes)
            .map(|secret| AdminToken::new(TokenSource::File(path), secret)),
        Err(e) => {
            check.error(file, format!("{what}: cannot read it: {e}"));
            None
        }
    }
}

fn token_from_env(check: &mut Checker<'_>, env: &Spanned<String>) -> Option<AdminToken> {
    let name = env.get_ref();
    let what = format!("admin token_env {name}");
    if name.is_empty() || name.contains(['=', '\0']) {
        check.error(
            env,
            format!("admin token_env {name:?} is not an environment variable name"),
        );
        return None;
    }
    match std::env::var_os(name) {
        Some(value) => checked_token(check, env, &what, value.as_encoded_bytes())
            .map(|secret| AdminToken::new(TokenSource::Env(name.clone()), secret)),
        None => {
            check.error(env, format!("{what}: the variable is not set"));
            None
        }
    }
}

/// The token in `bytes` without trailing whitespace (the newline an editor or `echo` adds),
/// if it is one a client can send in an `Authorization` header and long enough.
fn checked_token<'b, T>(
    check: &mut Checker<'_>,
    at: &Spanned<T>,
    what: &str,
    bytes: &'b [u8],
) -> Option<&'b [u8]> {
    let secret = bytes.trim_ascii_end();
    if secret.is_empty() {
        check.error(at, format!("{what}: the token is empty"));
        None
    } else if !secret.iter().all(u8::is_ascii_graphic) {
        check.error(
            at,
            format!(
                "{what}: the token may hold only visible ASCII characters (no spaces), as it is \
                 sent in an Authorization header"
            ),
        );
        None
    } else if secret.len() < MIN_ADMIN_TOKEN_CHARS {
        check.error(
            at,
            format!(
                "{what}: the token has {} characters; use at least {MIN_ADMIN_TOKEN_CHARS} \
                 (for example from `openssl rand -hex 32`)",
                secret.len()
            ),
        );
        None
    } else {
        Some(secret)
    }
}

/// One of `hosts`, lower-case and without a trailing dot.
fn host_name(check: &mut Checker<'_>, raw: &Spanned<String>) -> Option<String> {
    let name = raw.get_ref().trim_end_matches('.').to_ascii_lowercase();
    if name.contains(':') {
        check.error(
            raw,
            format!(
                "admin hosts: \"{}\" must be a host name without a port (any port is accepted)",
                raw.get_ref()
            ),
        );
        None
    } else if !is_dns_name(&name) {
        check.error(
            raw,
            format!(
                "admin hosts: \"{}\" is not a valid host name",
                raw.get_ref()
            ),
        );
        None
    } else {
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{AdminAuth, AdminToken, TokenSource};
    use crate::config::{AdminConfig, parse};

    const TOKEN: &str = "0123456789abcdef";

    /// A fresh folder for one test's files, removed when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(test: &str) -> Folder {
            let dir =
                std::env::temp_dir().join(format!("weir-admin-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("mkdir");
            Folder(dir)
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.0.join(name), contents).expect("write");
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A config of one listener and `[admin]` with `lines` (from line 4), read from `dir`:
    /// the admin's settings, or one `line:col: message` per problem.
    fn admin(dir: &Path, lines: &str) -> Result<AdminConfig, String> {
        let text = format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[admin]\n{lines}\n");
        match parse(&dir.join("weir.toml"), &text) {
            Ok(config) => Ok(config.admin.expect("[admin]")),
            Err(e) => Err(e
                .diagnostics
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}: {}",
                        d.line.unwrap_or(0),
                        d.column.unwrap_or(0),
                        d.message
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    fn problems(dir: &Path, lines: &str) -> String {
        admin(dir, lines).map_or_else(|e| e, |a| format!("accepted: {a:?}"))
    }

    #[test]
    fn who_may_use_the_admin() {
        let folder = Folder::new("who");
        let dir = &folder.0;
        let auth = |lines: &str| admin(dir, lines).map(|a| a.auth);
        assert_eq!(
            auth("address = \"127.0.0.1:9901\""),
            Ok(AdminAuth::OpenByDefault)
        );
        assert_eq!(
            auth("address = \"[::1]:9901\""),
            Ok(AdminAuth::OpenByDefault)
        );
        assert_eq!(
            auth("address = \"127.0.0.1:9901\"\nopen = true"),
            Ok(AdminAuth::Open)
        );
        let cases: &[(&str, &str)] = &[
            (
                "address = \"0.0.0.0:9901\"",
                "4:11: admin address 0.0.0.0:9901 is not a loopback address, so the admin needs a token: set token_file or token_env (or bind 127.0.0.1)",
            ),
            (
                "address = \"10.0.0.7:9901\"\nopen = true",
                "5:8: admin: open = true is allowed only on a loopback address (127.0.0.1 or [::1]); 10.0.0.7:9901 can be reached from other machines, so set token_file or token_env",
            ),
            (
                "address = \"127.0.0.1:9901\"\nopen = false",
                "5:8: admin: open = false needs a token: set token_file or token_env",
            ),
            (
                "address = \"127.0.0.1:9901\"\ntoken_file = \"admin.token\"\ntoken_env = \"WEIR_TEST_UNSET_b7d1\"",
                "6:13: admin: give token_file or token_env, not both",
            ),
            (
                "address = \"127.0.0.1:9901\"\ntoken_env = \"WEIR_TEST_UNSET_b7d1\"",
                "5:13: admin token_env WEIR_TEST_UNSET_b7d1: the variable is not set",
            ),
            (
                "address = \"127.0.0.1:9901\"\ntoken_env = \"\"",
                "5:13: admin token_env \"\" is not an environment variable name",
            ),
            (
                "address = \"127.0.0.1:9901\"\nhosts = [\"admin.internal:9901\", \"bad name\", \"Admin.Example.\"]",
                "5:10: admin hosts: \"admin.internal:9901\" must be a host name without a port (any port is accepted)\n5:33: admin hosts: \"bad name\" is not a valid host name",
            ),
        ];
        for (lines, expected) in cases {
            assert_eq!(problems(dir, lines), *expected, "{lines}");
        }
        assert_eq!(
            admin(
                dir,
                "address = \"127.0.0.1:9901\"\nhosts = [\"Admin.Example.\"]"
            )
            .map(|a| a.hosts),
            Ok(vec!["admin.example".to_owned()])
        );
    }

    #[test]
    fn a_token_file_is_read_and_checked() {
        let folder = Folder::new("file");
        let dir = &folder.0;
        let path = dir.join("admin.token");
        let lines = "address = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"";
        assert_eq!(
            problems(dir, lines),
            format!(
                "5:14: admin token_file \"{}\": cannot read it: No such file or directory (os error 2)",
                path.display()
            )
        );
        for (contents, problem) in [
            ("\n", "the token is empty"),
            (
                "0123 456789abcdef\n",
                "the token may hold only visible ASCII characters (no spaces), as it is sent in an Authorization header",
            ),
            (
                "changeme\n",
                "the token has 8 characters; use at least 16 (for example from `openssl rand -hex 32`)",
            ),
        ] {
            folder.write("admin.token", contents);
            assert_eq!(
                problems(dir, lines),
                format!("5:14: admin token_file \"{}\": {problem}", path.display()),
                "{contents:?}"
            );
        }
        // The newline an editor or `echo` leaves is not part of the token.
        folder.write("admin.token", &format!("{TOKEN}\n"));
        let config = admin(dir, lines).expect("valid");
        let AdminAuth::Bearer(token) = &config.auth else {
            panic!("no token: {config:?}");
        };
        assert_eq!(token.source(), &TokenSource::File(path));
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!token.matches(format!("{TOKEN}\n").as_bytes()));
        assert_eq!(
            problems(dir, &format!("{lines}\nopen = true")),
            "6:8: admin: open = true and a token contradict each other; remove one"
        );
    }

    #[test]
    fn a_token_matches_itself_only() {
        let token = AdminToken::new(TokenSource::Env("T".into()), TOKEN.as_bytes());
        assert!(token.matches(TOKEN.as_bytes()));
        for wrong in [
            &b""[..],
            b"0123456789abcdeF",
            b"0123456789abcde",
            b"0123456789abcdef0",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn a_token_prints_as_its_source() {
        let token = AdminToken::new(
            TokenSource::File("/etc/weir/admin.token".into()),
            TOKEN.as_bytes(),
        );
        let debug = format!("{token:?}");
        assert!(
            debug.contains("admin.token") && !debug.contains("0123"),
            "{debug}"
        );
        assert_eq!(
            serde_json::to_value(&token).expect("json"),
            serde_json::json!({"file": "/etc/weir/admin.token"})
        );
    }
}
