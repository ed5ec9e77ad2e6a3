//! The cluster's small PKI (rcgen): one CA, and certificates for nodes and
//! operators that carry the holder's name (CN) and role (OU). ECDSA P-256.

use crate::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The permission bits of a private key file (TLS, WireGuard, signing
/// key) when group or others may read or write it; None when it is 0600 or
/// stricter. Every holder of a key refuses a loose one.
pub fn loose_mode(p: &std::path::Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// Writes `body` to `path` so that no reader ever sees half a file and
/// nothing planted beside it is followed: a fresh temp file in the same
/// directory (random name, `O_CREAT|O_EXCL`, so a file or symlink already
/// there is never opened), its mode set at creation and again on the open
/// file (whatever the umask), the data fsynced, then renamed over `path`
/// (a symlink at `path` is replaced, not followed) and the directory
/// fsynced. For keys, certificates, backups and configs.
pub fn write_file_atomic(path: &std::path::Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let perms = || std::fs::Permissions::from_mode(mode);
    let mut tmp = tempfile::Builder::new()
        .prefix(".anygate-")
        .suffix(".tmp")
        .permissions(perms())
        .tempfile_in(dir)?;
    tmp.as_file().set_permissions(perms())?;
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// A new cluster CA, valid from now for `valid`.
pub fn new_ca(name: &str, valid: Duration) -> Result<Pem, PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "anygate");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    p.not_before = at(now - Duration::from_secs(300));
    p.not_after = at(now + valid);
    let cert = p.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What to put into a certificate.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub role: Role,
    /// Addresses and host names the holder serves on (nodes): IPs become IP
    /// SANs, anything else a DNS SAN.
    pub sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Request {
    pub fn new(name: &str, role: Role, sans: Vec<String>, valid: Duration) -> Request {
        let now = SystemTime::now();
        Request {
            name: name.to_string(),
            role,
            sans,
            not_before: now - Duration::from_secs(300),
            not_after: now + valid,
        }
    }
}

/// A certificate for `req`, signed by the CA (`ca`: its PEM cert and key).
pub fn issue(ca: &Pem, req: &Request) -> Result<Pem, PkiError> {
    if req.name.is_empty() || req.name.len() > 64 || req.name.chars().any(|c| c.is_control()) {
        return Err(PkiError::Invalid(format!(
            "name {:?}: 1-64 printable characters",
            req.name
        )));
    }
    if req.role == Role::Node && req.sans.is_empty() {
        return Err(PkiError::Invalid(
            "a node certificate needs the addresses or names it is reached at (--san)".into(),
        ));
    }
    let ca_key =
        KeyPair::from_pem(&ca.key).map_err(|e| PkiError::Invalid(format!("CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name.as_str());
    dn.push(DnType::OrganizationalUnitName, req.role.as_str());
    dn.push(DnType::OrganizationName, "anygate");
    p.distinguished_name = dn;
    for s in &req.sans {
        let san = match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                s.clone()
                    .try_into()
                    .map_err(|e| PkiError::Invalid(format!("SAN {s:?}: {e}")))?,
            ),
        };
        p.subject_alt_names.push(san);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Nodes are servers and clients (Raft both ways); operators clients.
    p.extended_key_usages = match req.role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    p.not_before = at(req.not_before);
    p.not_after = at(req.not_after);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity_of;

    #[test]
    fn files_are_written_whole_with_their_mode_and_nothing_planted_is_followed() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let key = dir.path().join("node.key");
        // The old helper wrote through `node.tmp`: a symlink planted there
        // (or at the key itself) must not carry the key anywhere else.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        symlink(&victim, dir.path().join("node.tmp")).unwrap();
        // A looser file already at the path is replaced, mode included.
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_file_atomic(&key, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(loose_mode(&key).unwrap(), None);
        let link = dir.path().join("link.key");
        symlink(&victim, &link).unwrap();
        write_file_atomic(&link, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let cert = dir.path().join("node.pem");
        write_file_atomic(&cert, b"cert", 0o644).unwrap();
        assert_eq!(mode(&cert), 0o644);
        // No temp file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".anygate-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn issued_certificate_names_holder_and_role() {
        let ca = new_ca("test CA", Duration::from_secs(3600)).unwrap();
        let c = issue(
            &ca,
            &Request::new("alice", Role::Operator, vec![], Duration::from_secs(60)),
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(c.cert.as_bytes()).unwrap();
        let id = identity_of(&der).unwrap();
        assert_eq!(id.name, "alice");
        assert_eq!(id.role, Role::Operator);
        // The CA itself names no role: it cannot be used as a client.
        let der = CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap();
        assert!(identity_of(&der).is_err());
    }

    #[test]
    fn node_certificate_needs_an_address() {
        let ca = new_ca("test CA", Duration::from_secs(3600)).unwrap();
        let r = Request::new("node-1", Role::Node, vec![], Duration::from_secs(60));
        assert!(issue(&ca, &r).is_err());
        let r = Request::new(
            "node-1",
            Role::Node,
            vec!["10.0.0.1".into(), "gw1.example.net".into()],
            Duration::from_secs(60),
        );
        issue(&ca, &r).unwrap();
    }
}
