//! Client key pairs are generated here, in anygatectl: the private key never
//! leaves this process except inside the config it prints.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};

pub struct KeyPair {
    pub private: String,
    pub public: String,
}

pub fn generate() -> KeyPair {
    let secret = StaticSecret::random_from_rng(OsRng);
    let public = PublicKey::from(&secret);
    KeyPair {
        private: STANDARD.encode(secret.to_bytes()),
        public: STANDARD.encode(public.as_bytes()),
    }
}

pub fn preshared() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_32_bytes_and_distinct() {
        let a = super::generate();
        let b = super::generate();
        assert_ne!(a.private, b.private);
        for k in [&a.private, &a.public, &super::preshared()] {
            assert_eq!(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k)
                    .unwrap()
                    .len(),
                32
            );
        }
    }
}
