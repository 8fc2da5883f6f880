//! Reproducers of bugs the fuzz targets found in code this crate does not
//! own, each fixed: every test here guards its fix.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, ManualClock, MemoryStore, Policy, Store, Timestamp};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::RedisServer;
use floodgate_tower::{ClientIpConfig, ForwardedHeader};
use http::{HeaderMap, HeaderValue};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Where the penalty reproducers' clock starts.
const START: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

/// What the penalty reproducers share: a runtime, a redis-server of their
/// own, a manual clock at [`START`], and a policy of 1 per minute with a
/// 1 s penalty.
struct PenaltyRig {
    runtime: tokio::runtime::Runtime,
    server: RedisServer,
    clock: ManualClock,
    policy: Policy,
}

impl PenaltyRig {
    fn start() -> Self {
        PenaltyRig {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            server: RedisServer::start(),
            clock: ManualClock::new(START),
            policy: Policy::new(Algorithm::FixedWindow, 1, Duration::from_secs(60))
                .and_then(|p| p.with_block_for(Duration::from_secs(1)))
                .expect("a policy"),
        }
    }

    /// A memory store and a Redis store, both on the rig's clock.
    async fn stores(&self) -> (MemoryStore, RedisStore) {
        let memory = MemoryStore::with_clock(1_000, Arc::new(self.clock.clone()));
        let redis = RedisStore::connect(
            RedisConfig::new(self.server.url())
                .with_clock(Arc::new(self.clock.clone()))
                .with_ttl_margin(Duration::from_secs(3600)),
        )
        .await
        .expect("redis answers");
        (memory, redis)
    }
}

/// Found by the identity target (its client-prefix invariant), fixed in
/// 1dc2fcc. A proxy that appends its
/// element to the client's own `Forwarded` line forwards
/// `for=6.6.6.6;x="` + `, for=203.0.113.9`: the client's unterminated quote
/// swallows the proxy's element, and floodgate takes the client's chosen
/// 6.6.6.6. It may fall back to the proxy (an unreadable header), never
/// believe the client.
#[test]
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

/// Found by the lua target (memory and Redis disagree). Once the clock
/// steps back (an NTP correction; Redis' own clock can step too), a block
/// that had ended is in force again, and the memory store has kept every
/// trace of it where Redis has dropped some. Here: a listing after the
/// penalty ended pruned it from Redis' registry, so Redis neither lists nor
/// lifts it while its penalty key goes on refusing the client
/// (`DELETE /admin/blocks/<key>` answers 404, the client stays refused);
/// memory lists it and lifts it. The same family: Redis zeroes an ended
/// penalty's key on removal and never registers a zero-TTL manual block,
/// and memory then enforces or lists what Redis does not.
#[test]
fn an_ended_block_revived_by_a_clock_step_back_is_listed_and_lifted_alike() {
    let rig = PenaltyRig::start();
    rig.runtime.block_on(async {
        let (memory, redis) = rig.stores().await;
        let check = Check::new("login", &rig.policy, "ip:192.0.2.1", 1);
        let m = steps(&memory, &rig.clock, START, &check).await;
        let r = steps(&redis, &rig.clock, START, &check).await;
        assert_eq!(
            m, r,
            "(listed, lifted, still blocked): memory left, redis right"
        );
    });

    /// Over the limit (a 1 s penalty); the penalty ends and a listing finds
    /// it ended; the clock steps back into it. Then: how many blocks are
    /// listed, whether lifting it lifts anything, whether it still blocks.
    async fn steps<S: Store>(
        store: &S,
        clock: &ManualClock,
        start: Timestamp,
        check: &Check<'_>,
    ) -> (usize, bool, bool) {
        clock.set(start);
        store.check(&[*check]).await.expect("decided");
        store.check(&[*check]).await.expect("decided");
        clock.set(Timestamp::from_micros(start.as_micros() + 2_000_000));
        assert!(store.blocks().await.expect("listed").is_empty());
        clock.set(Timestamp::from_micros(start.as_micros() + 500_000));
        let listed = store.blocks().await.expect("listed").len();
        let lifted = store.remove_block(check.key).await.expect("lifted");
        let blocked = store
            .peek(check.rule, check.policy, check.key)
            .await
            .expect("peeked")
            .blocked;
        (listed, lifted, blocked)
    }
}

/// Found by the config target (every problem must name its place), fixed
/// in 15cff8c; guards it. An unknown field's name went into the place
/// unquoted: one named by the empty string was reported at `""` (top level)
/// or `server ` (in a section), so `check-config` printed `: unknown field`
/// with nothing before the colon, and a name ending in a newline split the
/// line.
#[test]
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

/// Found by the identity target after 1dc2fcc, which made a `Forwarded`
/// line whose quotes do not close unreadable; fixed in c9b8f65 (a quoted
/// value must end its pair). The client's open quote can
/// still be closed by the proxy's own part when that part holds an escaped
/// quote: `for=6.6.6.6;x="` + `, for=203.0.113.9;x="q\"uote"` closes, the
/// comma is read as quoted, and the client's 6.6.6.6 counts.
#[test]
fn a_quote_left_open_cannot_choose_the_client_when_the_proxy_part_holds_quotes() {
    let config = ClientIpConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("a network")],
        header: ForwardedHeader::Forwarded,
        ..ClientIpConfig::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "forwarded",
        HeaderValue::from_static(r#"for=6.6.6.6;x=", for=203.0.113.9;x="q\"uote""#),
    );
    let client = config.client_ip(Some(ip("10.0.0.1")), &headers);
    assert!(
        client == Some(ip("203.0.113.9")) || client == Some(ip("10.0.0.1")),
        "the client chose {client:?}"
    );
}

/// Found by the lua target after a91e3b9, fixed in c9b8f65 (Redis leaves
/// an ended penalty as memory does). Removing a penalty that had already
/// ended: Redis deleted its registry entry and zeroed its key, memory left
/// it (it zeroes only a penalty in force). After a clock step
/// back into the penalty, memory enforces (and lists) it, Redis does not.
#[test]
fn a_penalty_removed_after_it_ended_stays_removed_alike_after_a_step_back() {
    let rig = PenaltyRig::start();
    rig.runtime.block_on(async {
        let (memory, redis) = rig.stores().await;
        let check = Check::new("login", &rig.policy, "ip:192.0.2.1", 1);
        let m = steps(&memory, &rig.clock, START, &check).await;
        let r = steps(&redis, &rig.clock, START, &check).await;
        assert_eq!(
            m, r,
            "(lifted, blocked after the step back): memory left, redis right"
        );
    });

    /// Over the limit (a 1 s penalty); once it ended, the block is removed;
    /// the clock steps back into it.
    async fn steps<S: Store>(
        store: &S,
        clock: &ManualClock,
        start: Timestamp,
        check: &Check<'_>,
    ) -> (bool, bool) {
        clock.set(start);
        store.check(&[*check]).await.expect("decided");
        store.check(&[*check]).await.expect("decided");
        clock.set(Timestamp::from_micros(start.as_micros() + 2_000_000));
        let lifted = store.remove_block(check.key).await.expect("removed");
        clock.set(Timestamp::from_micros(start.as_micros() + 500_000));
        let blocked = store
            .peek(check.rule, check.policy, check.key)
            .await
            .expect("peeked")
            .blocked;
        (lifted, blocked)
    }
}
