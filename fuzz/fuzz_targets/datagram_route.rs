//! The receive thread's and a shard's routing decisions for arbitrary datagrams and sources.
//! Input: a source (IPv4 address and port, 6 bytes), a clock step (2 bytes), the datagram.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use greenroom_sfu::fuzzing::DatagramRouter;
use libfuzzer_sys::fuzz_target;

/// One router for the whole run: its address map and clock carry over between inputs.
static ROUTER: Mutex<Option<DatagramRouter>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, p0, p1, t0, t1, datagram @ ..] = data else {
        return;
    };
    let src = SocketAddr::from((
        Ipv4Addr::new(*a, *b, *c, *d),
        u16::from_be_bytes([*p0, *p1]),
    ));
    let mut router = ROUTER.lock().unwrap_or_else(|e| e.into_inner());
    let router = router.get_or_insert_with(DatagramRouter::default);
    let _ = router.route(datagram, src, u16::from_be_bytes([*t0, *t1]));
});
