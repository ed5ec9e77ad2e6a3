//! Any bytes a userspace WireGuard could answer to `get=1`: the parser
//! returns an answer or an error, never panics; what it accepts encodes
//! back into `set` lines that parse again to the same peers.
#![no_main]

use anygate_core::dataplane::uapi_text::{encode_set, parse_get};
use anygate_core::dataplane::Action;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(obs) = parse_get(text) {
        let actions: Vec<Action> = obs
            .peers
            .values()
            .map(|p| Action::AddPeer(p.config.clone()))
            .collect();
        let set = encode_set(&actions);
        assert!(set.ends_with('\n'));
        // The set lines, read back as a device would answer them, hold
        // exactly the peers we parsed.
        let again = parse_get(&format!("{set}errno=0\n")).expect("our own set lines parse");
        let configs = |o: &anygate_core::dataplane::Observed| {
            o.peers.values().map(|p| p.config.clone()).collect::<Vec<_>>()
        };
        assert_eq!(configs(&again), configs(&obs));
    }
});
