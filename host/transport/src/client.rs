//! TLS towards the outside world on behalf of plugins: the handshake the
//! `tls` check inspects, and the verified streams sinks speak SMTP over.
//! Trust is the system roots plus, when given, one extra PEM CA.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
use tokio_rustls::client::TlsStream;

use crate::tls::provider;

/// One certificate as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// What a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub chain: Vec<CertInfo>,
    /// `None` when the chain verifies for the name.
    pub chain_error: Option<String>,
    pub protocol: String,
}

fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        roots
    })
}

fn roots_with(ca_pem: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = system_roots().clone();
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for block in pem_blocks(pem)? {
            roots.add(CertificateDer::from(block)).map_err(|e| format!("CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("CA: no PEM certificate found".into());
        }
    }
    Ok(roots)
}

/// Decodes the `CERTIFICATE` blocks of a PEM text.
fn pem_blocks(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let end = body.find("-----END CERTIFICATE-----").ok_or("CA: unterminated PEM block")?;
        let text: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(base64_decode(&text).ok_or("CA: bad base64 in PEM block")?);
        rest = &body[end..];
    }
    Ok(out)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Records the verdict of the real verifier and lets the handshake finish,
/// so an expired or untrusted certificate can still be looked at.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Mutex<Option<String>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = verdict.err().map(|e| e.to_string());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|_| format!("`{name}` is not a valid TLS server name"))
}

/// Handshakes over `stream` presenting `name` and returns the server's
/// chain with whether it verifies. Untrusted or expired chains are
/// returned, not refused.
pub async fn inspect(
    stream: TcpStream,
    name: &str,
    ca_pem: Option<&str>,
    timeout: Duration,
) -> Result<Inspected, String> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots_with(ca_pem)?), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let recording = Arc::new(Recording { inner, verdict: Mutex::new(None) });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recording.clone())
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(timeout, connector.connect(server_name(name)?, stream))
        .await
        .map_err(|_| format!("TLS handshake: timeout after {timeout:?}"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let chain =
        session.peer_certificates().unwrap_or_default().iter().map(|c| describe(c)).collect::<Result<_, _>>()?;
    let protocol = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let chain_error = recording.verdict.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Inspected { chain, chain_error, protocol })
}

/// [`https_over`]'s connector.
pub type HttpsOver<C> = hyper_rustls::HttpsConnector<C>;

/// The TLS layer of plugins' HTTP requests over `tcp`, a connector that
/// yields TCP streams (the plugin host's, which checks every address it
/// connects to): plain or TLS (HTTP/1.1), verified against the system
/// roots.
pub fn https_over<C>(tcp: C) -> Result<HttpsOver<C>, String> {
    let mut config = crate::tls::probe_client_config(false).map_err(|e| e.to_string())?;
    config.alpn_protocols.clear(); // the connector sets its own
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// A verified TLS stream over `stream` to `name` (for implicit TLS and
/// STARTTLS). Trust: system roots plus `ca_pem`.
pub async fn connect(stream: TcpStream, name: &str, ca_pem: Option<&str>) -> Result<TlsStream<TcpStream>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots_with(ca_pem)?)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config)).connect(server_name(name)?, stream).await.map_err(|e| format!("TLS: {e}"))
}

fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let octets: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        names.push(std::net::Ipv6Addr::from(octets).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_decode() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap().self_signed(&key).unwrap();
        let blocks = pem_blocks(&cert.pem()).unwrap();
        assert_eq!(blocks, vec![cert.der().to_vec()]);
        assert!(roots_with(Some("nothing here")).is_err());
        assert_eq!(describe(cert.der()).unwrap().names, vec!["a.test".to_string()]);
    }
}
