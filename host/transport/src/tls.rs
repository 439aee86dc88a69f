//! rustls configuration: TLS 1.3 only, mutual authentication, and verifiers
//! that pin the peer's SPKI fingerprint instead of walking a CA chain.
//!
//! Pinning replaces chain validation, not proof of possession: the
//! handshake signature is still verified against the presented certificate,
//! so a replayed public certificate without its private key fails.

use std::sync::Arc;

use qu_core::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};

use crate::identity::fingerprint_of_cert_der;
use crate::{ALPN, TlsIdentity, TransportError};

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the dialling side accepts from the server it reaches.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    /// `None` accepts any key (join discovery: the operator confirms it).
    expect: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let seen = fingerprint_of_cert_der(end_entity).map_err(|e| Error::General(e.to_string()))?;
        match &self.expect {
            Some(expect) if *expect != seen => {
                Err(Error::General(format!("server key {seen} is not the pinned {expect}")))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Peer links offer only TLS 1.3, so this runs only for an insecure
        // HTTP probe meeting a TLS 1.2 server.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The listening side accepts any client key that proves possession; whether
/// the key belongs to a member is decided per message from the trust store,
/// because an unknown node must still reach the join handshake.
#[derive(Debug)]
pub(crate) struct PossessionClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PossessionClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        fingerprint_of_cert_der(end_entity).map_err(|e| Error::General(e.to_string()))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

pub(crate) fn server_config(identity: &TlsIdentity) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PossessionClientVerifier { algorithms: provider.signature_verification_algorithms });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn client_config(
    identity: &TlsIdentity,
    expect: Option<Fingerprint>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier { expect, algorithms: provider.signature_verification_algorithms });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// TLS for outbound HTTP probes (TLS 1.2 and 1.3): the system's trust store
/// (honouring `SSL_CERT_FILE`/`SSL_CERT_DIR`), or, with `insecure`, any
/// certificate — still with the handshake signature verified, so only the
/// chain check is skipped.
pub fn probe_client_config(insecure: bool) -> Result<ClientConfig, TransportError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut config = if insecure {
        let verifier =
            Arc::new(PinnedServerVerifier { expect: None, algorithms: provider.signature_verification_algorithms });
        builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
