//! Blocks: manual blocks listed and lifted, penalty blocks listed under their
//! rule, and both ending on time.

use std::time::Duration;

use floodgate_core::{Algorithm, Block, BlockSource, Check, Policy, Store, Timestamp};

use crate::support::{START_US, manual_clock, redis_on_clock};

#[tokio::test]
async fn manual_blocks_are_listed_replaced_and_lifted() {
    let clock = manual_clock();
    let store = redis_on_clock("blocks-manual", &clock);
    assert!(store.blocks().await.unwrap().is_empty());

    let block = store
        .add_block("ip:203.0.113.7", Duration::from_secs(600), "scraping")
        .await
        .unwrap();
    let expected = Block {
        target: "ip:203.0.113.7".into(),
        until: Timestamp::from_micros(START_US + 600_000_000),
        reason: "scraping".into(),
        source: BlockSource::Manual,
    };
    assert_eq!(block, expected);
    store
        .add_block(
            "header:x-api-key:le:aked",
            Duration::from_secs(60),
            "leaked key: rotate",
        )
        .await
        .unwrap();
    let listed = store.blocks().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].target, "header:x-api-key:le:aked");
    assert_eq!(listed[0].reason, "leaked key: rotate");
    assert_eq!(listed[1], expected);

    // A new block of the same target replaces the old one.
    store
        .add_block("ip:203.0.113.7", Duration::from_secs(30), "again")
        .await
        .unwrap();
    let listed = store.blocks().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].reason, "again");

    assert!(store.remove_block("ip:203.0.113.7").await.unwrap());
    assert!(!store.remove_block("ip:203.0.113.7").await.unwrap());
    assert_eq!(store.blocks().await.unwrap().len(), 1);

    // Blocks end on the store's clock.
    clock.advance(Duration::from_secs(60));
    assert!(store.blocks().await.unwrap().is_empty());
    assert!(
        !store
            .remove_block("header:x-api-key:le:aked")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_penalty_block_is_listed_under_its_rule_and_can_be_lifted() {
    let clock = manual_clock();
    let store = redis_on_clock("blocks-penalty", &clock);
    let policy = Policy::new(Algorithm::FixedWindow, 2, Duration::from_secs(60))
        .unwrap()
        .with_block_for(Duration::from_secs(900))
        .unwrap();
    let key = "ip:198.51.100.{7}";
    let check = Check::new("login", &policy, key, 1);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
    let refused = store.check(&[check]).await.unwrap().remove(0);
    assert!(!refused.allowed && refused.blocked);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(900)));

    let listed = store.blocks().await.unwrap();
    assert_eq!(
        listed,
        [Block {
            target: key.into(),
            until: Timestamp::from_micros(START_US + 900_000_000),
            reason: "over the limit of rule login".into(),
            source: BlockSource::Rule("login".into()),
        }]
    );

    // Still blocked after the window: the penalty outlasts it.
    clock.advance(Duration::from_secs(120));
    let d = store.check(&[check]).await.unwrap().remove(0);
    assert!(d.blocked);
    assert_eq!(d.retry_after, Some(Duration::from_secs(780)));

    // Lifting it clears the penalty itself, not only its listing.
    store
        .add_block(key, Duration::from_secs(10), "manual too")
        .await
        .unwrap();
    assert_eq!(store.blocks().await.unwrap().len(), 2);
    assert!(store.remove_block(key).await.unwrap());
    assert!(store.blocks().await.unwrap().is_empty());
    assert!(!store.peek("login", &policy, key).await.unwrap().blocked);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
}

#[tokio::test]
async fn a_penalty_block_ends_on_time() {
    let clock = manual_clock();
    let store = redis_on_clock("blocks-expiry", &clock);
    let policy = Policy::new(Algorithm::SlidingLog, 1, Duration::from_secs(1))
        .unwrap()
        .with_block_for(Duration::from_secs(30))
        .unwrap();
    let check = Check::new("api", &policy, "ip:192.0.2.200", 1);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
    assert!(store.check(&[check]).await.unwrap()[0].blocked);
    assert_eq!(store.blocks().await.unwrap().len(), 1);

    clock.advance(Duration::from_micros(29_999_999));
    assert!(
        store
            .peek("api", &policy, "ip:192.0.2.200")
            .await
            .unwrap()
            .blocked
    );
    assert_eq!(store.blocks().await.unwrap().len(), 1);
    clock.advance(Duration::from_micros(1));
    assert!(store.blocks().await.unwrap().is_empty());
    assert!(
        !store
            .peek("api", &policy, "ip:192.0.2.200")
            .await
            .unwrap()
            .blocked
    );
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
}
