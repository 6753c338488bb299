//! TLS from weir to a cluster's endpoints: whom to trust (the system's roots, a private CA,
//! pinned certificates, or nobody checked), the name sent and verified, weir's own client
//! certificate, and ALPN for the cluster's protocol.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::uri::Authority;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::{Files, Serving, TlsError, provider};
use crate::config::{Protocol, UpstreamTls};
use crate::upstream::Connection;

/// A cluster's TLS client config, rebuilt when its files change.
#[derive(Debug)]
pub struct ClientTls {
    settings: UpstreamTls,
    protocol: Protocol,
    current: ArcSwap<Configs>,
    serving: Serving,
}

/// One config per ALPN offer: the cluster's protocol's, and HTTP/1.1 alone for upgrades.
#[derive(Debug)]
struct Configs {
    main: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
}

/// A TLS connection to an endpoint, and whether ALPN settled on HTTP/2.
#[expect(
    missing_debug_implementations,
    reason = "a byte stream has nothing to show"
)]
pub struct Handshaken {
    /// The encrypted stream.
    pub stream: Connection,
    /// The endpoint agreed to `h2`.
    pub h2: bool,
}

impl ClientTls {
    /// Reads the cluster's TLS files (CA, pinned certificates, client certificate) and builds
    /// its client configs.
    pub fn load(settings: &UpstreamTls, protocol: Protocol) -> Result<ClientTls, TlsError> {
        let mut files = Files::default();
        let configs = build(settings, protocol, &mut files)?;
        let serving = Serving::default();
        serving.changed(&files);
        if !settings.verify {
            tracing::warn!(
                "a cluster has tls.verify = false: its endpoints' certificates are not checked"
            );
        }
        Ok(ClientTls {
            settings: settings.clone(),
            protocol,
            current: ArcSwap::from_pointee(configs),
            serving,
        })
    }

    /// Re-reads the files; new connections use them if they changed and are valid.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let mut files = Files::default();
        let configs = build(&self.settings, self.protocol, &mut files)?;
        if self.serving.changed(&files) {
            self.current.store(Arc::new(configs));
            return Ok(true);
        }
        Ok(false)
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &UpstreamTls {
        &self.settings
    }

    /// The cluster protocol its ALPN offer is for.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A TLS handshake over `stream` with the endpoint at `authority`, offering HTTP/1.1
    /// alone when `http1_only` (an upgrade), else what the cluster's protocol allows.
    pub async fn connect(
        &self,
        authority: &Authority,
        stream: Connection,
        http1_only: bool,
    ) -> Result<Handshaken, String> {
        let name = match &self.settings.sni {
            Some(sni) => sni.as_str(),
            None => authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("TLS: {name:?} is not a server name: {e}"))?;
        let configs = self.current.load();
        let config = if http1_only {
            &configs.http1
        } else {
            &configs.main
        };
        let stream = TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Handshaken {
            stream: Box::new(stream),
            h2,
        })
    }
}

fn build(
    settings: &UpstreamTls,
    protocol: Protocol,
    files: &mut Files,
) -> Result<Configs, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if !settings.verify {
        Arc::new(Pinned {
            certificates: None,
            provider: provider.clone(),
        })
    } else if let Some(pinned) = &settings.pinned {
        Arc::new(Pinned {
            certificates: Some(files.certificates(pinned)?),
            provider: provider.clone(),
        })
    } else {
        let roots = match &settings.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in files.certificates(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::in_file(ca, format!("not a CA certificate: {e}")))?;
                }
                Arc::new(roots)
            }
            None => system_roots()?,
        };
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("TLS verifier: {e}")))?
    };
    let client_key = match &settings.client_cert {
        Some(pair) => {
            let key = files.certified_key(pair, &provider)?;
            Some(Arc::new(AlwaysResolvesClientCert(Arc::new(key))))
        }
        None => None,
    };
    let make = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match &client_key {
            Some(resolver) => builder.with_client_cert_resolver(resolver.clone()),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    let main = match protocol {
        Protocol::H2 => make(&[b"h2"])?,
        Protocol::Auto => make(&[b"h2", b"http/1.1"])?,
        Protocol::Http1 | Protocol::H2c => make(&[b"http/1.1"])?,
    };
    Ok(Configs {
        main,
        http1: make(&[b"http/1.1"])?,
    })
}

/// The operating system's trusted roots, read once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, TlsError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError(format!(
                    "no system CA certificates to verify endpoints with ({why}); install ca-certificates or give tls.ca"
                )));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Presents weir's one client certificate to every endpoint that asks.
#[derive(Debug)]
struct AlwaysResolvesClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for AlwaysResolvesClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Trusts exactly the listed certificates, byte for byte (`certificates: None`: any
/// certificate, `verify = false`). The handshake's signature is still checked, so the
/// endpoint holds the certificate's key.
#[derive(Debug)]
struct Pinned {
    certificates: Option<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.certificates {
            Some(pinned) if !pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Err(rustls::Error::General(
                    "the endpoint's certificate is not one of tls.pinned".into(),
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
