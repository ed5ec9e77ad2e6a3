//! JSON for protobuf enum fields: prost stores them as `i32`; people and
//! scripts read names. `BGP_STATE_GRACEFUL_SHUTDOWN` prints as
//! `"graceful-shutdown"` (the enum's prefix dropped, kebab-case), and either
//! the name or the number is accepted back.

/// `BGP_STATE_GRACEFUL_SHUTDOWN` with prefix `BGP_STATE_` -> `graceful-shutdown`.
pub fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
        .replace('_', "-")
}

macro_rules! names {
    ($($module:ident => $ty:ty, $prefix:literal;)*) => {$(
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                match <$ty>::try_from(*v) {
                    Ok(e) => s.serialize_str(&super::short_name(e.as_str_name(), $prefix)),
                    Err(_) => s.serialize_i32(*v),
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    N(i32),
                    S(String),
                }
                match Raw::deserialize(d)? {
                    Raw::N(n) => Ok(n),
                    Raw::S(name) => {
                        let full = format!("{}{}", $prefix, name.to_ascii_uppercase().replace('-', "_"));
                        <$ty>::from_str_name(&full)
                            .map(|e| e as i32)
                            .ok_or_else(|| serde::de::Error::custom(format!("unknown value {name:?}")))
                    }
                }
            }
        }
    )*};
}

names! {
    bgp_state => crate::v1::BgpState, "BGP_STATE_";
    withdraw_reason => crate::v1::WithdrawReason, "WITHDRAW_REASON_";
    dataplane_backend => crate::v1::DataplaneBackend, "DATAPLANE_BACKEND_";
    peer_state => crate::v1::PeerState, "PEER_STATE_";
    console_role => crate::v1::ConsoleRole, "CONSOLE_ROLE_";
}

#[cfg(test)]
mod tests {
    use crate::v1::{BgpState, BgpStatus};

    #[test]
    fn enums_round_trip_by_name() {
        let b = BgpStatus {
            state: BgpState::GracefulShutdown as i32,
            ..Default::default()
        };
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["state"], "graceful-shutdown");
        assert_eq!(j["withdraw_reason"], "none");
        let back: BgpStatus = serde_json::from_value(j).unwrap();
        assert_eq!(back.state(), BgpState::GracefulShutdown);
        let n: BgpStatus = serde_json::from_str(r#"{"state": 4}"#).unwrap();
        assert_eq!(n.state(), BgpState::Announced);
        assert!(serde_json::from_str::<BgpStatus>(r#"{"state": "sideways"}"#).is_err());
    }
}
