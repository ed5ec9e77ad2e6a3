//! The gateways' shared WireGuard identity. The private key lives in a 0600
//! file on each node and never enters the replicated log; the node checks the
//! file before use and derives the public key that must equal the cluster's
//! `server_public_key` setting.

use crate::model::WgKey;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("cannot read private key file {0}: {1}")]
    Read(PathBuf, String),
    #[error(
        "private key file {path} has mode {mode:o}: it must not be readable or writable by group or others (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("private key file {0} does not hold a base64 WireGuard key (32 bytes, as `wg genkey` writes)")]
    Malformed(PathBuf),
}

/// A loaded private key and the public key it implies.
pub struct Identity {
    pub private_key: [u8; 32],
    pub public_key: WgKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        write!(f, "Identity {{ public_key: {} }}", self.public_key)
    }
}

pub fn public_key_of(private_key: &[u8; 32]) -> WgKey {
    let secret = x25519_dalek::StaticSecret::from(*private_key);
    WgKey(*x25519_dalek::PublicKey::from(&secret).as_bytes())
}

/// Read and check a key file as `wg genkey` writes it.
pub fn load(path: &Path) -> Result<Identity, IdentityError> {
    let loose = anygate_proto::pki::loose_mode(path)
        .map_err(|e| IdentityError::Read(path.into(), e.to_string()))?;
    if let Some(mode) = loose {
        return Err(IdentityError::Permissions {
            path: path.into(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| IdentityError::Read(path.into(), e.to_string()))?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| IdentityError::Malformed(path.into()))?;
    let private_key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| IdentityError::Malformed(path.into()))?;
    Ok(Identity {
        public_key: public_key_of(&private_key),
        private_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn loads_checks_and_derives() {
        let dir = tempfile::tempdir().unwrap();
        // RFC 7748 section 6.1 test vector (Alice).
        let sk = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let pk = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        let good = write(
            dir.path(),
            "good.key",
            &format!("{}\n", STANDARD.encode(sk)),
            0o600,
        );
        let id = load(&good).unwrap();
        assert_eq!(id.public_key, WgKey(pk));
        assert!(
            !format!("{id:?}").contains(&STANDARD.encode(sk)),
            "Debug must not print the private key"
        );

        let open = write(dir.path(), "open.key", &STANDARD.encode(sk), 0o644);
        let e = load(&open).unwrap_err();
        assert!(
            matches!(e, IdentityError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let bad = write(dir.path(), "bad.key", "not a key", 0o600);
        assert!(matches!(load(&bad), Err(IdentityError::Malformed(_))));
        let short = write(dir.path(), "short.key", &STANDARD.encode([1u8; 31]), 0o600);
        assert!(matches!(load(&short), Err(IdentityError::Malformed(_))));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(IdentityError::Read(..))
        ));
    }
}
