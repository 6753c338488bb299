//! TLS on a listener: the certificate for each handshake chosen by SNI, ALPN (`h2`,
//! `http/1.1`), the minimum version, client certificates, session resumption, and the
//! listener's config rebuilt when its files change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Files, Serving, TlsError, provider};
use crate::config::{ListenerTls, TlsVersion};

/// Sessions the listener remembers for resumption by session id (TLS 1.2) and stateful
/// tickets (TLS 1.3); stateless tickets need no memory.
const SESSION_CACHE: usize = 4096;

/// A TLS listener's current config and what it needs to build the next one.
#[derive(Debug)]
pub struct ServerTls {
    settings: ListenerTls,
    current: ArcSwap<ServerConfig>,
    serving: Serving,
    /// Kept across rebuilds, so a certificate reload does not end every client's session —
    /// but on a listener with `client_auth`: rustls does not verify a resumed session's
    /// client certificate again, so a session from before a change (a client CA replaced)
    /// must not resume after it.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

/// What a TLS handshake settled, for the requests on the connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), lower case.
    pub server_name: Option<String>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The verified client certificate's subject as RFC 4514 text (`CN=alice,O=Example`),
    /// when the client sent one.
    pub client_subject: Option<String>,
}

impl ServerTls {
    /// Reads the listener's certificate files and builds its config.
    pub fn load(settings: &ListenerTls) -> Result<ServerTls, TlsError> {
        let (sessions, ticketer) = session_stores()?;
        let mut files = Files::default();
        let config = build(settings, &mut files, &sessions, &ticketer)?;
        let serving = Serving::default();
        serving.changed(&files);
        Ok(ServerTls {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
            serving,
            sessions,
            ticketer,
        })
    }

    /// Re-reads the files and, if they changed and are valid, serves new handshakes with
    /// them. `Ok(true)` when something new is serving; an error leaves the old config.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let mut files = Files::default();
        let (sessions, ticketer) = if self.settings.client_auth.is_some() {
            session_stores()?
        } else {
            (self.sessions.clone(), self.ticketer.clone())
        };
        let built = build(&self.settings, &mut files, &sessions, &ticketer);
        match built {
            Ok(config) if self.serving.changed(&files) => {
                self.current.store(Arc::new(config));
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An acceptor with the config serving now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

impl TlsInfo {
    /// What `stream`'s completed handshake settled.
    pub fn of<IO>(stream: &TlsStream<IO>) -> TlsInfo {
        let connection = stream.get_ref().1;
        TlsInfo {
            server_name: connection.server_name().map(str::to_ascii_lowercase),
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            client_subject: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| subject(cert)),
        }
    }
}

/// A certificate's subject as RFC 4514 text: the most specific name first, `,` between
/// names, `+` between the attributes of one, special characters escaped.
fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut names = Vec::new();
    let rdns: Vec<_> = cert.subject().iter_rdn().collect();
    for rdn in rdns.into_iter().rev() {
        let mut attributes = Vec::new();
        for attribute in rdn.iter() {
            let oid = attribute.attr_type();
            let name = x509_parser::objects::oid2abbrev(oid, registry)
                .map_or_else(|_| oid.to_id_string(), str::to_owned);
            match attribute.as_str() {
                Ok(value) => attributes.push(format!("{name}={}", escape_rfc4514(value))),
                // Not a string type x509-parser reads (BMPString, TeletexString, …): the
                // value's bytes in hex, as RFC 4514 §2.4 writes what it cannot show as text.
                Err(_) => {
                    let hex: String = attribute
                        .attr_value()
                        .as_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    attributes.push(format!("{}=#{hex}", oid.to_id_string()));
                }
            }
        }
        names.push(attributes.join("+"));
    }
    Some(names.join(","))
}

/// Escapes an attribute value as RFC 4514 §2.4 asks.
fn escape_rfc4514(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A listener's session cache and session-ticket keys.
type SessionStores = (Arc<dyn StoresServerSessions>, Arc<dyn ProducesTickets>);

/// A new session cache and ticket keys: sessions from any other pair do not resume.
fn session_stores() -> Result<SessionStores, TlsError> {
    let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
    let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError(format!("cannot make session tickets: {e}")))?;
    Ok((sessions, ticketer))
}

fn build(
    settings: &ListenerTls,
    files: &mut Files,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut store = CertStore::default();
    for pair in &settings.certificates {
        let key = Arc::new(files.certified_key(pair, &provider)?);
        store.add(key, &pair.cert)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for cert in files.certificates(&auth.ca)? {
                roots.add(cert).map_err(|e| {
                    TlsError::in_file(&auth.ca, format!("not a CA certificate: {e}"))
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &auth.crl {
                // Every certificate in the chain is checked; one whose issuer has no list
                // here is refused too (nginx's ssl_crl, OpenSSL's CRL_CHECK_ALL).
                verifier = verifier.with_crls(files.crls(crl)?);
            }
            let verifier = if auth.required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            };
            let verifier = verifier.map_err(|e| TlsError::in_file(&auth.ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(store));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = sessions.clone();
    config.ticketer = ticketer.clone();
    Ok(config)
}

/// Certificates by the names in their own SAN lists: exact names first, then wildcards
/// (`*.example.com` covers one label), then the first certificate for anything else.
#[derive(Debug, Default)]
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Adds `key` under its certificate's DNS names; the first certificate added is also the
    /// default. A name two certificates share goes to the first.
    fn add(&mut self, key: Arc<CertifiedKey>, file: &std::path::Path) -> Result<(), TlsError> {
        let leaf = key
            .end_entity_cert()
            .map_err(|e| TlsError::in_file(file, e))?;
        let parsed = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::in_file(file, format!("cannot parse the certificate: {e}")))?;
        for name in parsed.valid_dns_names() {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_owned()),
                None => self.exact.entry(name),
            }
            .or_insert_with(|| key.clone());
        }
        self.default.get_or_insert(key);
        Ok(())
    }

    fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        Arc::new(
            CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider())
                .expect("certified key"),
        )
    }

    #[test]
    fn a_subject_reads_most_specific_first_with_escapes() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        // rcgen writes CN first in the certificate, so O, the last, reads first.
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("O=Example\\, Inc.,CN=alice")
        );
    }

    #[test]
    fn sni_picks_exact_names_then_wildcards_then_the_first_certificate() {
        let (a, wild, b) = (
            key(&["a.example.com"]),
            key(&["*.example.com"]),
            key(&["B.example.org", "www.example.com"]),
        );
        let mut store = CertStore::default();
        let file = std::path::Path::new("x.pem");
        store.add(a.clone(), file).expect("a");
        store.add(wild.clone(), file).expect("wildcard");
        store.add(b.clone(), file).expect("b");
        let is = |name: Option<&str>, want: &Arc<CertifiedKey>| {
            let got = store.find(name).expect("a certificate");
            assert!(Arc::ptr_eq(&got, want), "{name:?}");
        };
        is(Some("a.example.com"), &a);
        is(Some("A.Example.COM."), &a);
        is(Some("www.example.com"), &b);
        is(Some("b.example.org"), &b);
        is(Some("other.example.com"), &wild);
        is(Some("deep.other.example.com"), &a);
        is(Some("example.com"), &a);
        is(None, &a);
    }
}
