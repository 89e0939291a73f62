//! Free TCP ports on 127.0.0.1 for servers a test starts.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process. The OS may offer a port again
/// once its probe listener is closed; remembering them keeps two servers of
/// one test binary (tests run in parallel threads) from being given the same.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
///
/// Another process can still take it before the caller binds it; servers
/// started by this crate retry with new ports when that happens.
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a probe socket on 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("probe socket has no local address: {e}"))
            .port();
        if handed.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port on 127.0.0.1 after 100 tries");
}
