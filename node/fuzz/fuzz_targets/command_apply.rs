//! Any bytes as a Raft log entry: decoding a `Request` either fails or
//! yields a command that the state machine applies without panicking; a
//! refused command changes nothing; the state survives a snapshot image
//! round trip.
#![no_main]

use anygate_core::model::{Changes, Inventory, InventoryImage, Request, Response};
use libfuzzer_sys::fuzz_target;

/// The image with its unordered parts sorted (endpoints live in a HashMap).
fn canon(inv: &Inventory) -> InventoryImage {
    let mut img = inv.to_image();
    img.endpoints.sort_by_key(|e| e.0);
    img
}

fuzz_target!(|data: &[u8]| {
    // A few commands per input, split on newlines, applied in order.
    let mut inv = Inventory::default();
    for (i, chunk) in data.split(|b| *b == b'\n').take(8).enumerate() {
        let Ok(req) = serde_json::from_slice::<Request>(chunk) else {
            continue;
        };
        let before = serde_json::to_string(&canon(&inv)).unwrap();
        let mut ch = Changes::default();
        let r = inv.apply(i as u64 + 1, &req, &mut ch);
        if matches!(r, Response::Rejected(_)) {
            let mut after = canon(&inv);
            // Refusals are remembered (request ids) but change nothing else.
            after.requests.clear();
            let mut b: InventoryImage = serde_json::from_str(&before).unwrap();
            b.requests.clear();
            assert_eq!(serde_json::to_string(&b).unwrap(), serde_json::to_string(&after).unwrap());
        }
    }
    let img = serde_json::to_string(&canon(&inv)).unwrap();
    let back = Inventory::from_image(serde_json::from_str(&img).unwrap());
    assert_eq!(serde_json::to_string(&canon(&back)).unwrap(), img);
});
