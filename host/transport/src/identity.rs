//! Node identity: an ECDSA P-256 key pair and a self-signed certificate whose
//! CN is the node id; the fingerprint is `sha256:` + hex of the SPKI.

use qu_core::{Fingerprint, NodeId};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("generate key pair: {0}")]
    Generate(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key: {0}")]
    PrivateKey(String),
    #[error("the private key does not belong to the certificate (key {key}, certificate {cert})")]
    Mismatch { key: Fingerprint, cert: Fingerprint },
}

/// A freshly generated identity, as PEM text for the store to write.
#[derive(Debug, Clone)]
pub struct GeneratedIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: Fingerprint,
}

/// A loaded identity, ready for TLS.
#[derive(Debug)]
pub struct TlsIdentity {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self { cert: self.cert.clone(), key: self.key.clone_key(), fingerprint: self.fingerprint.clone() }
    }
}

fn spki_fingerprint(spki_der: &[u8]) -> Fingerprint {
    Fingerprint::from_sha256(&Sha256::digest(spki_der).into())
}

/// Generates a key pair and a self-signed certificate for `node_id`.
pub fn generate(node_id: &NodeId) -> Result<GeneratedIdentity, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| IdentityError::Generate(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![node_id.to_string()]).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_id.to_string());
    name.push(DnType::OrganizationName, "quptime");
    params.distinguished_name = name;
    let cert = params.self_signed(&key).map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let fingerprint = fingerprint_of_cert_der(cert.der())?;
    Ok(GeneratedIdentity { cert_pem: cert.pem(), key_pem: key.serialize_pem(), fingerprint })
}

/// The SPKI fingerprint of a DER certificate.
pub fn fingerprint_of_cert_der(der: &[u8]) -> Result<Fingerprint, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Certificate(format!("not an X.509 certificate: {e}")))?;
    Ok(spki_fingerprint(cert.tbs_certificate.subject_pki.raw))
}

/// The SPKI fingerprint of the first certificate in a PEM text.
pub fn fingerprint_of_cert_pem(pem: &str) -> Result<Fingerprint, IdentityError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| IdentityError::Certificate(format!("not a PEM certificate: {e}")))?;
    fingerprint_of_cert_der(&der)
}

/// The common name of a PEM certificate (for qu, the node id).
pub fn common_name_of_cert_pem(pem: &str) -> Result<String, IdentityError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| IdentityError::Certificate(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| IdentityError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| IdentityError::Certificate("no common name".into()))?;
    Ok(cn.to_string())
}

impl TlsIdentity {
    /// Loads a certificate and its private key from PEM, refusing a key that
    /// does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| IdentityError::Certificate(format!("not a PEM certificate: {e}")))?;
        let fingerprint = fingerprint_of_cert_der(&cert)?;
        let key_pair = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::PrivateKey(e.to_string()))?;
        let key_fingerprint = spki_fingerprint(&key_pair.subject_public_key_info());
        if key_fingerprint != fingerprint {
            return Err(IdentityError::Mismatch { key: key_fingerprint, cert: fingerprint });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::PrivateKey(format!("not a PEM private key: {e}")))?;
        Ok(Self { cert, key, fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::from_uuid(uuid::Uuid::new_v4()).unwrap()
    }

    #[test]
    fn fingerprint_is_stable_for_a_key_and_differs_between_keys() {
        let id = node();
        let a = generate(&id).unwrap();
        let b = generate(&id).unwrap();
        assert_eq!(fingerprint_of_cert_pem(&a.cert_pem).unwrap(), a.fingerprint);
        assert_eq!(fingerprint_of_cert_pem(&a.cert_pem).unwrap(), fingerprint_of_cert_pem(&a.cert_pem).unwrap());
        assert_ne!(a.fingerprint, b.fingerprint, "different keys, different fingerprints");
        let loaded = TlsIdentity::from_pem(&a.cert_pem, &a.key_pem).unwrap();
        assert_eq!(loaded.fingerprint, a.fingerprint);
        assert_eq!(common_name_of_cert_pem(&a.cert_pem).unwrap(), id.to_string());
    }

    #[test]
    fn same_key_new_certificate_keeps_the_fingerprint() {
        let a = generate(&node()).unwrap();
        let key = KeyPair::from_pem(&a.key_pem).unwrap();
        let reissued = CertificateParams::new(vec!["other".to_string()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(fingerprint_of_cert_pem(&reissued.pem()).unwrap(), a.fingerprint);
    }

    #[test]
    fn a_key_from_another_identity_is_refused() {
        let a = generate(&node()).unwrap();
        let b = generate(&node()).unwrap();
        assert!(matches!(TlsIdentity::from_pem(&a.cert_pem, &b.key_pem), Err(IdentityError::Mismatch { .. })));
        assert!(TlsIdentity::from_pem("garbage", &a.key_pem).is_err());
        assert!(TlsIdentity::from_pem(&a.cert_pem, "garbage").is_err());
    }
}
