//! TLS and SASL for secured clusters: the rustls configuration and rskafka's `SaslConfig`,
//! built from a cluster's settings.
//!
//! Validation builds both once to report bad files and unset variables by field; every
//! connection attempt builds them again, so a rotated password file or certificate is picked
//! up by the next retry without a reload. The secret itself is never stored in the topology:
//! it lives only inside the `SaslConfig` handed to rskafka.

use std::path::Path;
use std::sync::Arc;

use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Cluster, PasswordSource, Sasl, SaslMechanism, Tls};

/// A setting that cannot be turned into a working TLS or SASL configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SecurityError {
    /// Relative to the cluster: `tls.ca`, `sasl.password_env`, ...
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> SecurityError {
    SecurityError { field, message: message.into() }
}

fn certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(field, format!("cannot read {shown:?}: {}", pem_error(&e, "certificate"))))?;
    if certs.is_empty() {
        return Err(err(field, format!("{shown:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")));
    }
    Ok(certs)
}

/// pki_types says "no items found" for a file without the wanted PEM section; an I/O error
/// keeps the OS's words (file not found, permission denied).
fn pem_error(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) if io.kind() == std::io::ErrorKind::NotFound => "file not found".to_string(),
        E::Io(io) => io.to_string(),
        E::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The rustls client configuration for `tls`: the cluster's CA as the only trust anchor (no
/// system store: a private CA is the normal case for Kafka clusters), plus the client
/// certificate for mutual TLS.
pub fn tls_config(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("tls.ca", &tls.ca)? {
        roots.add(cert).map_err(|e| {
            err("tls.ca", format!("{:?}: not a usable CA certificate: {e}", tls.ca.display().to_string()))
        })?;
    }
    // rskafka enables ring only; naming the provider keeps this working if another crate in
    // the build ever enables aws-lc-rs too (then rustls cannot pick a default).
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = certificates("tls.cert", &client.cert)?;
            let key = PrivateKeyDer::from_pem_file(&client.key).map_err(|e| {
                err(
                    "tls.key",
                    format!("cannot read {:?}: {}", client.key.display().to_string(), pem_error(&e, "private key")),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                err(
                    "tls.key",
                    format!(
                        "{:?} does not go with {:?}: {e}",
                        client.key.display().to_string(),
                        client.cert.display().to_string()
                    ),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The password, read now from its variable or file (a file's trailing newline is not part of
/// it). Never logged: errors name the source, not the value.
fn password(source: &PasswordSource) -> Result<String, SecurityError> {
    match source {
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            Ok(_) => Err(err("sasl.password_env", format!("environment variable {var:?} is empty"))),
            Err(_) => Err(err("sasl.password_env", format!("environment variable {var:?} is not set"))),
        },
        PasswordSource::File(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                let why =
                    if e.kind() == std::io::ErrorKind::NotFound { "file not found".to_string() } else { e.to_string() };
                err("sasl.password_file", format!("cannot read {shown:?}: {why}"))
            })?;
            let v = text.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                return Err(err("sasl.password_file", format!("{shown:?} is empty")));
            }
            Ok(v.to_string())
        }
    }
}

/// The SASL password, read now, for clients that drive SASL themselves (the group coordinator
/// client).
pub fn sasl_password(sasl: &Sasl) -> Result<String, SecurityError> {
    password(&sasl.password)
}

/// rskafka's SASL configuration, with the password read now.
pub fn sasl_config(sasl: &Sasl) -> Result<SaslConfig, SecurityError> {
    let credentials = Credentials::new(sasl.username.clone(), password(&sasl.password)?);
    Ok(match sasl.mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(credentials),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
    })
}

/// Every problem with the cluster's TLS and SASL settings (for validation).
pub fn check(cluster: &Cluster) -> Vec<SecurityError> {
    let mut out = Vec::new();
    if let Some(Err(e)) = cluster.tls.as_ref().map(tls_config) {
        out.push(e);
    }
    if let Some(Err(e)) = cluster.sasl.as_ref().map(sasl_config) {
        out.push(e);
    }
    out
}

/// `builder` with the cluster's TLS and SASL settings applied.
pub fn apply(mut builder: ClientBuilder, cluster: &Cluster) -> Result<ClientBuilder, SecurityError> {
    if let Some(tls) = &cluster.tls {
        builder = builder.tls_config(tls_config(tls)?);
    }
    if let Some(sasl) = &cluster.sasl {
        builder = builder.sasl_config(sasl_config(sasl)?);
    }
    Ok(builder)
}
