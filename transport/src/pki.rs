//! The cluster's certificates: a CA made at bootstrap, and node
//! certificates issued from certificate signing requests, so that a node's
//! private key never leaves it.
//!
//! A node certificate names its node id in a DNS SAN, `node-<id>.holdfast`:
//! that is the identity the transport authenticates.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("bad PEM: {0}")]
    Pem(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertAndKey { .. }")
    }
}

/// The DNS name that a node certificate carries for node `id`.
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}.holdfast")
}

/// Makes a new cluster CA.
pub fn generate_ca(cluster_id: &str) -> Result<CertAndKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("holdfast cluster {cluster_id} CA"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes a node key and a signing request for it. Returns the PEM key and
/// the DER request.
pub fn generate_csr(name: &str) -> Result<(String, Vec<u8>), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Issues the certificate of node `id` named `name` for the key in
/// `csr_der`. Only the request's public key is used: every other field is
/// set here.
pub fn sign_node(ca: &CertAndKey, csr_der: &[u8], id: u64, name: &str) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca.cert_pem)?.self_signed(&ca_key)?;
    let mut csr =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(node_dns_name(id).try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    csr.params = params;
    Ok(csr.signed_by(&ca_cert, &ca_key)?.pem())
}

/// Parses the first certificate of a PEM string to DER.
pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(format!("{e:?}")))
}

/// Parses a PEM private key to DER.
pub fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(format!("{e:?}")))
}

/// The fingerprint that join tokens pin: blake3 of the CA certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    blake3::hash(cert.as_ref()).to_hex().to_string()
}

/// The node id named by a node certificate's `node-<id>.holdfast` SAN.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => d
            .strip_prefix("node-")?
            .strip_suffix(".holdfast")?
            .parse()
            .ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_node_id() {
        let ca = generate_ca("c1").unwrap();
        let (_key, csr) = generate_csr("n1").unwrap();
        let cert = sign_node(&ca, &csr, 42, "n1").unwrap();
        assert_eq!(node_id_of(&cert_der(&cert).unwrap()), Some(42));
        assert_eq!(node_id_of(&cert_der(&ca.cert_pem).unwrap()), None);
        assert!(sign_node(&ca, b"garbage", 1, "x").is_err());
    }

    #[test]
    fn pem_round_trips() {
        let ca = generate_ca("c1").unwrap();
        assert!(key_der(&ca.key_pem).is_ok());
        assert!(cert_der("nope").is_err());
    }
}
