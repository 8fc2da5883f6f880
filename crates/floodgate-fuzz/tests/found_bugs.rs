//! Reproducers of bugs the fuzz targets found in code this crate does not
//! own. Each is ignored until its fix lands (then drop the `ignore`, and the
//! matching allowance in the target); run them with
//! `cargo test -p floodgate-fuzz --test found_bugs -- --ignored`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{ManualClock, MemoryStore, Timestamp};
use floodgate_tower::{ClientIpConfig, ForwardedHeader};
use http::{HeaderMap, HeaderValue};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Found by the identity target (its prefix invariant; see
/// `targets::identity::FORWARDED_QUOTE_SPOOF`). A proxy that appends its
/// element to the client's own `Forwarded` line forwards
/// `for=6.6.6.6;x="` + `, for=203.0.113.9`: the client's unterminated quote
/// swallows the proxy's element, and floodgate takes the client's chosen
/// 6.6.6.6. It may fall back to the proxy (an unreadable header), never
/// believe the client.
#[test]
#[ignore = "floodgate-tower identity.rs: an unterminated quote in Forwarded lets a client choose its address"]
fn an_unterminated_quote_in_forwarded_cannot_choose_the_client() {
    let config = ClientIpConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("a network")],
        header: ForwardedHeader::Forwarded,
        ..ClientIpConfig::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "forwarded",
        HeaderValue::from_static("for=6.6.6.6;x=\", for=203.0.113.9"),
    );
    let client = config.client_ip(Some(ip("10.0.0.1")), &headers);
    assert!(
        client == Some(ip("203.0.113.9")) || client == Some(ip("10.0.0.1")),
        "the client chose {client:?}"
    );
}

/// Found by the lua target (memory and Redis disagree). A block of zero TTL
/// has ended when it is made: Redis drops it at once, the memory store keeps
/// it, and once the clock steps back (an NTP correction) the memory store
/// lists it, and enforces it, as in force. The admin API asks for at least
/// 1 ms, so only library callers of `Store::add_block` reach it.
#[test]
#[ignore = "floodgate-core memory.rs: a zero-TTL block revives when the clock steps back"]
fn a_block_that_ended_when_made_stays_ended_when_the_clock_steps_back() {
    let start = Timestamp::from_micros(1_700_000_000_000_000);
    let clock = ManualClock::new(start);
    let store = MemoryStore::with_clock(1_000, Arc::new(clock.clone()));
    store.add_block_now("ip:192.0.2.1", Duration::ZERO, "ended at once");
    clock.set(Timestamp::from_micros(start.as_micros() - 1_000_000));
    assert_eq!(store.blocks_now(), Vec::new());
    assert!(!store.remove_block_now("ip:192.0.2.1"));
}

/// Found by the config target (every problem must name its place). An
/// unknown field's name goes into the place unquoted: one named by the empty
/// string is reported at `""` (top level) or `server ` (in a section), so
/// `check-config` prints `: unknown field` with nothing before the colon,
/// and a name ending in a newline splits the line.
#[test]
#[ignore = "floodgate-server config.rs: an unknown field's name goes into the problem's place unquoted"]
fn an_unknown_field_with_an_empty_name_is_named() {
    use floodgate_server::config::{Overrides, parse};
    for text in ["\"\" = 1", "[server]\n\"\" = 1", "\"x\\n\" = 1"] {
        let err = parse(text, None, &Overrides::default()).expect_err("an unknown field");
        let at = &err.problems[0].at;
        assert!(
            !at.is_empty() && at.trim() == at,
            "{text:?}: the problem is at {at:?}"
        );
    }
}
