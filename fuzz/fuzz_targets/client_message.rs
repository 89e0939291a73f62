//! Fuzzes parsing of `/ws` client messages (any bytes, as a text frame would carry them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = kpi_gateway::ws::mux::parse_client_message(text) {
            assert!(e.code == "bad_message" || e.code == "unknown_type");
        }
    }
});
