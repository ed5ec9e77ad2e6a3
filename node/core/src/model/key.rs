//! WireGuard keys: 32 bytes, standard base64 on the wire and in config files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A Curve25519 public key or a preshared key (both are 32 opaque bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {0:?} is not valid base64")]
    NotBase64(String),
    #[error("key {0:?} decodes to {1} bytes; a WireGuard key is 32 bytes (44 base64 characters)")]
    WrongLength(String, usize),
}

impl WgKey {
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(WgKey)
    }
}

impl FromStr for WgKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let bytes = STANDARD
            .decode(s)
            .map_err(|_| KeyError::NotBase64(s.to_string()))?;
        WgKey::from_slice(&bytes).ok_or(KeyError::WrongLength(s.to_string(), bytes.len()))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({})", self.to_base64())
    }
}

impl Serialize for WgKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let good = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        assert_eq!(good.parse::<WgKey>().unwrap().to_base64(), good);
        assert!(matches!(
            "not base64!".parse::<WgKey>(),
            Err(KeyError::NotBase64(_))
        ));
        assert!(matches!(
            "AAAA".parse::<WgKey>(),
            Err(KeyError::WrongLength(_, 3))
        ));
        let k: WgKey = good.parse().unwrap();
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<WgKey>(&j).unwrap(), k);
    }
}
