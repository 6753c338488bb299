//! The TLS parts of the configuration: a listener's certificates and client authentication,
//! a cluster's TLS to its endpoints and the HTTP version it speaks. Only paths and settings
//! live here; the files are read by `crate::tls` (at startup, by `weir check`, and again
//! whenever they change).

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Spanned;

use super::model::{RawCertKey, RawListenerTls, RawUpstreamTls};
use super::validate::Checker;

/// A TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// Certificate chains with their keys; a client's SNI picks one by the names in its
    /// certificate, and the first is the default for clients that send no (or an unknown) name.
    pub certificates: Vec<CertKeyFiles>,
    /// The oldest TLS version accepted.
    pub min_version: TlsVersion,
    /// Client certificates (mutual TLS), if asked for.
    pub client_auth: Option<ClientAuth>,
}

/// A certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertKeyFiles {
    /// The chain's file, resolved against the config file's folder.
    pub cert: PathBuf,
    /// The key's file, resolved against the config file's folder.
    pub key: PathBuf,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Client certificates on a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client's certificate must chain to.
    pub ca: PathBuf,
    /// Refuse the handshake without a valid client certificate; `false` asks for one and
    /// verifies it if sent.
    pub required: bool,
    /// Certificate revocation lists (PEM, one or more): a revoked client certificate is
    /// refused, and so is one whose issuer has no list in the file.
    pub crl: Option<PathBuf>,
}

/// TLS from weir to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// The server name sent and verified; `None`: the endpoint's host (no SNI for an IP).
    pub sni: Option<String>,
    /// Trust these CA certificates (PEM) instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Verify the endpoint's certificate (chain and name). `false` accepts any certificate:
    /// for tests only, and logged as a warning at startup.
    pub verify: bool,
    /// Accept only these certificates (PEM), byte for byte, whatever signed them.
    pub pinned: Option<PathBuf>,
    /// The certificate weir presents to endpoints that ask for one.
    pub client_cert: Option<CertKeyFiles>,
}

/// The HTTP version a cluster speaks to its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 on pooled keep-alive connections.
    Http1,
    /// HTTP/2 over TLS (the endpoint must agree on `h2` by ALPN).
    H2,
    /// HTTP/2 over cleartext TCP, with prior knowledge.
    H2c,
    /// HTTP/2 when TLS's ALPN agrees on it, else HTTP/1.1; HTTP/1.1 without TLS.
    Auto,
}

pub(super) fn listener_tls(
    check: &mut Checker<'_>,
    raw: &Spanned<RawListenerTls>,
    base_dir: &Path,
) -> ListenerTls {
    let tls = raw.get_ref();
    if tls.certificates.get_ref().is_empty() {
        check.error(
            &tls.certificates,
            "listener tls: certificates is empty; give at least one { cert, key }".into(),
        );
    }
    let min_version = match &tls.min_version {
        None => TlsVersion::V1_2,
        Some(v) => match v.get_ref().as_str() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                check.error(
                    v,
                    format!(
                        "listener tls: min_version \"{other}\" is not supported; use \"1.2\" or \"1.3\""
                    ),
                );
                TlsVersion::V1_2
            }
        },
    };
    ListenerTls {
        certificates: tls
            .certificates
            .get_ref()
            .iter()
            .map(|c| cert_key(c, base_dir))
            .collect(),
        min_version,
        client_auth: tls.client_auth.as_ref().map(|c| ClientAuth {
            ca: base_dir.join(&c.ca),
            required: c.required.unwrap_or(true),
            crl: c.crl.as_ref().map(|crl| base_dir.join(crl)),
        }),
    }
}

/// A cluster's protocol and TLS: `https://` endpoints or a `tls` table turn TLS on.
pub(super) fn cluster_transport(
    check: &mut Checker<'_>,
    name: &str,
    raw_protocol: Option<&Spanned<String>>,
    raw_tls: Option<&Spanned<RawUpstreamTls>>,
    https_endpoints: bool,
    base_dir: &Path,
) -> (Protocol, Option<UpstreamTls>) {
    let protocol = match raw_protocol {
        None => Protocol::Auto,
        Some(p) => match p.get_ref().as_str() {
            "http1" => Protocol::Http1,
            "h2" => Protocol::H2,
            "h2c" => Protocol::H2c,
            "auto" => Protocol::Auto,
            other => {
                check.error(
                    p,
                    format!(
                        "cluster \"{name}\": protocol \"{other}\" is not one of \"http1\", \"h2\", \"h2c\", \"auto\""
                    ),
                );
                Protocol::Auto
            }
        },
    };
    let tls = match raw_tls {
        Some(raw) => Some(upstream_tls(check, name, raw, base_dir)),
        None if https_endpoints => Some(UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            pinned: None,
            client_cert: None,
        }),
        None => None,
    };
    if let Some(p) = raw_protocol {
        match (protocol, tls.is_some()) {
            (Protocol::H2, false) => check.error(
                p,
                format!(
                    "cluster \"{name}\": protocol \"h2\" is HTTP/2 over TLS, and the cluster has no TLS; use \"h2c\" for cleartext HTTP/2, or https:// endpoints"
                ),
            ),
            (Protocol::H2c, true) => check.error(
                p,
                format!(
                    "cluster \"{name}\": protocol \"h2c\" is cleartext HTTP/2, and the cluster uses TLS; use \"h2\""
                ),
            ),
            _ => {}
        }
    }
    (protocol, tls)
}

fn upstream_tls(
    check: &mut Checker<'_>,
    name: &str,
    raw: &Spanned<RawUpstreamTls>,
    base_dir: &Path,
) -> UpstreamTls {
    let tls = raw.get_ref();
    if let Some(sni) = &tls.sni
        && rustls_pki_types::ServerName::try_from(sni.as_str()).is_err()
    {
        check.error(
            raw,
            format!("cluster \"{name}\": tls.sni \"{sni}\" is not a valid server name"),
        );
    }
    let verify = tls.verify.unwrap_or(true);
    if !verify && (tls.ca.is_some() || tls.pinned.is_some()) {
        check.error(
            raw,
            format!(
                "cluster \"{name}\": tls.verify = false accepts any certificate, so tls.ca and tls.pinned would be ignored; remove one or the other"
            ),
        );
    }
    if tls.ca.is_some() && tls.pinned.is_some() {
        check.error(
            raw,
            format!(
                "cluster \"{name}\": tls.ca and tls.pinned are two ways to trust an endpoint; give one"
            ),
        );
    }
    UpstreamTls {
        sni: tls.sni.clone(),
        ca: tls.ca.as_ref().map(|p| base_dir.join(p)),
        verify,
        pinned: tls.pinned.as_ref().map(|p| base_dir.join(p)),
        client_cert: tls.client_cert.as_ref().map(|c| cert_key(c, base_dir)),
    }
}

fn cert_key(raw: &RawCertKey, base_dir: &Path) -> CertKeyFiles {
    CertKeyFiles {
        cert: base_dir.join(&raw.cert),
        key: base_dir.join(&raw.key),
    }
}
