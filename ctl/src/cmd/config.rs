//! Signed client configs: `anygatectl config keygen | verify`, and the
//! signing used by `peer add|show|rotate --sign-key`.
//!
//! A signed config is the wg-quick config followed by one comment line
//!
//! ```text
//! # anygate-signature: ed25519 <public key, base64> <signature, base64>
//! ```
//!
//! The signature covers every byte before that line, so any change to the
//! config (an endpoint, a key, a route) breaks it; wg-quick and the
//! WireGuard apps ignore the comment.

use super::pki::write_file;
use super::Result;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::path::{Path, PathBuf};
use tonic::Status;

pub const MARK: &str = "# anygate-signature: ed25519 ";

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Create an ed25519 signing key for client configs: FILE (private,
    /// 0600; keep it with the operator) and FILE.pub (hand it to whoever
    /// checks configs).
    Keygen {
        /// Path of the private key; the public key goes to PATH.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a signed client config against a trusted public key.
    ///
    /// Exit 0 when the config is exactly what the holder of the key signed
    /// and holds only what anygate writes; 1 when it was changed, signed by
    /// another key, not signed, or carries a hook (PreUp, PostUp, PreDown,
    /// PostDown: root commands on the client) or a key anygate never writes.
    ///
    ///   anygatectl config verify alice-laptop.conf --key ops-signing.pub
    Verify {
        file: PathBuf,
        /// The trusted public key (a .pub file from `config keygen`).
        #[arg(long)]
        key: PathBuf,
    },
}

fn read(p: &Path) -> std::result::Result<String, Status> {
    std::fs::read_to_string(p)
        .map_err(|e| Status::failed_precondition(format!("{}: {e}", p.display())))
}

fn key_bytes<const N: usize>(p: &Path, text: &str) -> std::result::Result<[u8; N], Status> {
    B64.decode(text.trim())
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{}: not a base64 ed25519 key of {N} bytes",
                p.display()
            ))
        })
}

pub fn load_signing_key(p: &Path) -> std::result::Result<SigningKey, Status> {
    let loose = anygate_proto::pki::loose_mode(p)
        .map_err(|e| Status::failed_precondition(format!("{}: {e}", p.display())))?;
    if let Some(mode) = loose {
        return Err(Status::failed_precondition(format!(
            "{} is mode {mode:o}: a signing key must be 0600 or stricter (chmod 600 {})",
            p.display(),
            p.display()
        )));
    }
    Ok(SigningKey::from_bytes(&key_bytes(p, &read(p)?)?))
}

/// The key of a `--sign-key` flag, loaded (and checked) before anything is
/// written to the cluster.
pub fn signer(p: Option<&Path>) -> std::result::Result<Option<SigningKey>, Status> {
    p.map(load_signing_key).transpose()
}

/// `config`, signed when there is a signer.
pub fn maybe_sign(config: String, key: Option<&SigningKey>) -> String {
    match key {
        Some(k) => sign(&config, k),
        None => config,
    }
}

/// `config` with its signature line appended.
pub fn sign(config: &str, key: &SigningKey) -> String {
    let body = if config.ends_with('\n') {
        config.to_string()
    } else {
        format!("{config}\n")
    };
    let sig = key.sign(body.as_bytes());
    format!(
        "{body}{MARK}{} {}\n",
        B64.encode(key.verifying_key().as_bytes()),
        B64.encode(sig.to_bytes())
    )
}

/// Why a signed config does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the file is not signed (no anygate-signature line)")]
    Unsigned,
    #[error("malformed signature line")]
    MalformedLine,
    #[error("text follows the signature line")]
    TrailingText,
    #[error("malformed public key in the signature line")]
    MalformedKey,
    #[error("signed by another key ({0}), not the trusted one")]
    OtherKey(String),
    #[error("malformed signature")]
    MalformedSignature,
    #[error("the signature does not match: the config was changed after signing")]
    Changed,
    /// Refused whether or not the signature holds: a signed config is only
    /// as safe as the settings it was written from.
    #[error("not a config anygate writes: {0}")]
    Unsafe(#[from] anygate_core::wgquick::CheckError),
}

/// Ok(()) when `signed` is a config anygate writes (no hooks, no unknown
/// keys) and carries a valid signature by `trusted`.
pub fn verify(signed: &str, trusted: &VerifyingKey) -> std::result::Result<(), VerifyError> {
    anygate_core::wgquick::check(signed)?;
    let Some(at) = signed.rfind(MARK) else {
        return Err(VerifyError::Unsigned);
    };
    let (body, line) = signed.split_at(at);
    let mut parts = line[MARK.len()..].split_whitespace();
    let (Some(pk), Some(sig), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(VerifyError::MalformedLine);
    };
    if !line.trim_end().ends_with(sig) || line.trim_end().len() + 1 < line.len() {
        return Err(VerifyError::TrailingText);
    }
    let pk = B64
        .decode(pk)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(VerifyError::MalformedKey)?;
    if pk != *trusted.as_bytes() {
        return Err(VerifyError::OtherKey(B64.encode(pk)));
    }
    let sig = B64
        .decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or(VerifyError::MalformedSignature)?;
    trusted
        .verify(body.as_bytes(), &sig)
        .map_err(|_| VerifyError::Changed)
}

impl ConfigCmd {
    pub fn run(self, json: bool) -> Result {
        match self {
            ConfigCmd::Keygen { out } => {
                if out.exists() {
                    return Err(Status::already_exists(format!("{} exists", out.display())));
                }
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let public = B64.encode(key.verifying_key().as_bytes());
                let pub_path = PathBuf::from(format!("{}.pub", out.display()));
                write_file(&out, &format!("{}\n", B64.encode(key.to_bytes())), 0o600)?;
                write_file(&pub_path, &format!("{public}\n"), 0o644)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"private": out, "public": pub_path, "public_key": public})
                    );
                } else {
                    println!(
                        "signing key {}  public key {} ({public})",
                        out.display(),
                        pub_path.display()
                    );
                }
                Ok(())
            }
            ConfigCmd::Verify { file, key } => {
                let trusted = VerifyingKey::from_bytes(&key_bytes(&key, &read(&key)?)?)
                    .map_err(|e| Status::invalid_argument(format!("{}: {e}", key.display())))?;
                let text = read(&file)?;
                match verify(&text, &trusted) {
                    Ok(()) => {
                        if json {
                            println!("{}", serde_json::json!({"file": file, "valid": true}));
                        } else {
                            println!(
                                "{}: valid signature by {}",
                                file.display(),
                                B64.encode(trusted.as_bytes())
                            );
                        }
                        Ok(())
                    }
                    Err(why) => {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"file": file, "valid": false, "reason": why.to_string()})
                            );
                        }
                        Err(Status::failed_precondition(format!(
                            "{}: {why}",
                            file.display()
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "[Interface]\nPrivateKey = x\nAddress = 100.64.0.2/32\n\n[Peer]\nPublicKey = y\nEndpoint = 198.51.100.1:51820\nAllowedIPs = 172.16.0.0/16\n";

    #[test]
    fn a_signed_config_verifies_and_any_change_breaks_it() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let signed = sign(CFG, &k);
        assert!(signed.starts_with(CFG));
        verify(&signed, &k.verifying_key()).unwrap();
        let tampered = signed.replace("198.51.100.1", "203.0.113.66");
        assert_eq!(
            verify(&tampered, &k.verifying_key()),
            Err(VerifyError::Changed)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(matches!(
            verify(&signed, &other.verifying_key()),
            Err(VerifyError::OtherKey(_))
        ));
        assert_eq!(verify(CFG, &k.verifying_key()), Err(VerifyError::Unsigned));
        let appended = format!("{signed}PostUp = curl evil\n");
        assert!(verify(&appended, &k.verifying_key()).is_err());
    }

    #[test]
    fn a_signed_config_with_a_hook_is_refused_anyway() {
        // What an injected setting would have produced, signed by the
        // operator's own key: the signature holds, the config is refused.
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let injected = CFG.replace(
            "Endpoint = 198.51.100.1:51820\n",
            "Endpoint = vpn.example.com\nPostUp = touch /tmp/pwned:51820\n",
        );
        let e = verify(&sign(&injected, &k), &k.verifying_key()).unwrap_err();
        assert!(matches!(e, VerifyError::Unsafe(_)), "{e:?}");
        assert!(e.to_string().contains("line 8: PostUp is a hook"), "{e}");
        let unknown = CFG.replace("[Peer]\n", "[Peer]\nTable = off\n");
        assert!(matches!(
            verify(&sign(&unknown, &k), &k.verifying_key()),
            Err(VerifyError::Unsafe(_))
        ));
    }
}
