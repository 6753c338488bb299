//! TLS at both ends, with rustls: a listener's certificates chosen by SNI ([`ServerTls`]) and a
//! cluster's TLS to its endpoints ([`ClientTls`]). Both are built from the files the config
//! names and rebuilt when those files change ([`Files`]): new handshakes get the new
//! material, open connections keep what they started with, and a broken file is refused
//! with its name while the previous material keeps serving.
//!
//! The crypto provider is aws-lc-rs, rustls's default: its AES-GCM, ChaCha20 and ECDSA are
//! assembly-optimised (a TLS terminator spends its CPU there), it offers the post-quantum
//! hybrid key exchange X25519MLKEM768 by default, and it builds with the C compiler alone.

mod client;
mod server;

pub use client::{ClientTls, Handshaken};
pub use server::{ServerTls, TlsInfo};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::config::{CertKeyFiles, Config};

/// The crypto provider every TLS config is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why TLS material could not be loaded: one line that names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

impl TlsError {
    fn in_file(file: &Path, why: impl std::fmt::Display) -> TlsError {
        TlsError(format!("{}: {why}", file.display()))
    }
}

/// The files some TLS material was built from, read once per load, with a fingerprint of
/// their contents so a rescan rebuilds only when something changed.
#[derive(Debug, Default)]
pub(crate) struct Files {
    read: Vec<(PathBuf, Vec<u8>)>,
}

impl Files {
    /// The contents of `path`, remembered for the fingerprint.
    fn read(&mut self, path: &Path) -> Result<&[u8], TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::in_file(path, e))?;
        self.read.push((path.to_owned(), bytes));
        Ok(self.read.last().map_or(&[][..], |(_, b)| b.as_slice()))
    }

    /// SHA-256 over every file's name and contents, in the order read.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for (path, bytes) in &self.read {
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        hash.finalize().into()
    }

    /// Every certificate in the PEM file `path`, in order; at least one.
    fn certificates(&mut self, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        let certs = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::in_file(path, format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::in_file(path, "no certificate in the file"));
        }
        Ok(certs)
    }

    /// Every certificate revocation list in the PEM file `path`; at least one.
    fn crls(
        &mut self,
        path: &Path,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::in_file(path, format!("not a PEM CRL file: {e}")))?;
        if crls.is_empty() {
            return Err(TlsError::in_file(
                path,
                "no certificate revocation list (-----BEGIN X509 CRL-----) in the file",
            ));
        }
        Ok(crls)
    }

    /// The private key in the PEM file `path`.
    fn private_key(&mut self, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        let bytes = self.read(path)?;
        PrivateKeyDer::from_pem_slice(bytes)
            .map_err(|e| TlsError::in_file(path, format!("no usable private key: {e}")))
    }

    /// A certificate chain with its key, checked to belong together.
    fn certified_key(
        &mut self,
        files: &CertKeyFiles,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain = self.certificates(&files.cert)?;
        let key = self.private_key(&files.key)?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            TlsError(format!(
                "{} and {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })
    }
}

/// Material rebuilt from files when they change: the fingerprint of what is serving.
#[derive(Debug, Default)]
pub(crate) struct Serving(Mutex<Option<[u8; 32]>>);

impl Serving {
    /// Whether `files` differ from what is serving; if they do, they are now what is serving.
    fn changed(&self, files: &Files) -> bool {
        let fingerprint = Some(files.fingerprint());
        let mut serving = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *serving == fingerprint {
            return false;
        }
        *serving = fingerprint;
        true
    }
}

/// Loads every listener's and cluster's TLS material in `config`, as startup would: for
/// `weir check`. Every problem, one line each.
pub fn check(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls
            && let Err(e) = ServerTls::load(tls)
        {
            errors.push(format!("listener {}: {e}", listener.address));
        }
    }
    for cluster in &config.clusters {
        if let Some(tls) = &cluster.tls
            && let Err(e) = ClientTls::load(tls, cluster.protocol)
        {
            errors.push(format!("cluster \"{}\": {e}", cluster.name));
        }
    }
    errors
}
