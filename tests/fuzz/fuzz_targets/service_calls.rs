//! Fuzz target: the body of an application call or reply, as each service
//! decodes it (store, leases, update state, audit, health). The first byte
//! picks the decoder so one corpus covers them all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexi::storage::wire::{StoreCall, StoreReply};
use plexi::updates::leases::{LeaseCall, LeaseReply};
use plexi::updates::state::{SyncCall, SyncReply};
use plexi_api::model::HealthReport;
use plexi_p2p::codec::decode_cbor;

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => drop(decode_cbor::<StoreCall>(body)),
        1 => drop(decode_cbor::<StoreReply>(body)),
        2 => drop(decode_cbor::<LeaseCall>(body)),
        3 => drop(decode_cbor::<LeaseReply>(body)),
        4 => drop(decode_cbor::<SyncCall>(body)),
        5 => drop(decode_cbor::<SyncReply>(body)),
        6 => drop(decode_cbor::<HealthReport>(body)),
        _ => drop(plexi::audit::check_peer_body(body)),
    }
});
