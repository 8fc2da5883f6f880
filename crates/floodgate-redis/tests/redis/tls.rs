//! TLS and ACL: the store over `rediss://`, trusting a CA made for the test
//! and presenting a client certificate, logged in as an ACL user that may
//! run only what floodgate needs on its own keys.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, Error, Policy, Store, StoreErrorKind};
use floodgate_redis::{ConfigError, RedisConfig, RedisStore, TlsItem, TlsOptions};
use floodgate_testkit::topology::{self, TlsRedis};
use floodgate_testkit::unique_prefix;

use crate::support::{MANUAL_CLOCK_TTL_MARGIN, RELAXED_TIMEOUT, assert_basics_like_memory};

/// The ACL user floodgate's tests log in as: its keys (`fgtest:*`, as
/// floodgate's would be `floodgate:*`) and [`floodgate_redis::ACL_COMMANDS`],
/// nothing else (docs/DEPLOY.md gives the same rule).
fn acl_user() -> Vec<String> {
    topology::acl_user(
        "floodgate",
        "s3cret",
        "fgtest:*",
        floodgate_redis::ACL_COMMANDS,
    )
}

/// A TLS server with [`acl_user`].
fn start_tls() -> TlsRedis {
    let acl = acl_user();
    TlsRedis::start(&acl.iter().map(String::as_str).collect::<Vec<_>>())
}

fn certificates(tls: &TlsRedis) -> TlsOptions {
    TlsOptions::from_files(
        Some(&tls.ca_file()),
        Some(&tls.client_cert_file()),
        Some(&tls.client_key_file()),
    )
    .unwrap()
}

/// `e` and every error that caused it, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn store_error_kind(e: Error) -> StoreErrorKind {
    match e {
        Error::Store(s) => s.kind(),
        other => panic!("not a store error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_as_a_least_privilege_acl_user() {
    let tls = start_tls();
    let url = tls.url_as("floodgate", "s3cret");
    let prefix = unique_prefix("tls-basics");
    let mut n = 0;
    assert_basics_like_memory(|clock| {
        n += 1;
        RedisStore::new(
            RedisConfig::new(url.clone())
                .with_tls(certificates(&tls))
                .with_prefix(format!("{prefix}-{n}"))
                .with_timeout(RELAXED_TIMEOUT)
                .with_clock(Arc::new(clock.clone()))
                .with_ttl_margin(MANUAL_CLOCK_TTL_MARGIN),
        )
        .unwrap()
    })
    .await;
    // On Redis' clock (TIME inside the scripts) and through connect's PING.
    let store = RedisStore::connect(
        RedisConfig::new(url.clone())
            .with_tls(certificates(&tls))
            .with_prefix(unique_prefix("tls-server-time"))
            .with_timeout(RELAXED_TIMEOUT),
    )
    .await
    .unwrap();
    let policy = Policy::new(Algorithm::TokenBucket, 2, Duration::from_secs(60)).unwrap();
    let check = Check::new("tls", &policy, "ip:192.0.2.1", 1);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
    assert!(store.check(&[check]).await.unwrap()[0].allowed);
    assert!(!store.check(&[check]).await.unwrap()[0].allowed);
    let acl_log = tls.cli(&["acl", "log"]);
    assert!(
        acl_log.trim().is_empty(),
        "floodgate was denied something:\n{acl_log}"
    );

    // Keys outside the user's pattern are refused by Redis.
    let outside = RedisStore::new(
        RedisConfig::new(url.clone())
            .with_tls(certificates(&tls))
            .with_prefix("elsewhere")
            .with_timeout(RELAXED_TIMEOUT),
    )
    .unwrap();
    let e = chain(&outside.check(&[check]).await.unwrap_err());
    assert!(e.contains("NOPERM") || e.contains("permission"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_fail_fast_and_typed() {
    let tls = start_tls();
    let policy = Policy::new(Algorithm::FixedWindow, 5, Duration::from_secs(60)).unwrap();
    let check = Check::new("tls", &policy, "ip:192.0.2.1", 1);
    let attempt = async |config: RedisConfig| {
        let store = RedisStore::new(config.with_timeout(Duration::from_secs(2))).unwrap();
        store.check(&[check]).await.unwrap_err()
    };
    // A wrong password: calls time out while the client retries the
    // handshake in the background, then fail naming the cause.
    let wrong = RedisStore::new(
        RedisConfig::new(tls.url_as("floodgate", "wrong"))
            .with_tls(certificates(&tls))
            .with_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        let e = wrong.check(&[check]).await.unwrap_err();
        let text = chain(&e);
        if store_error_kind(e) != StoreErrorKind::Timeout {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still a timeout: {text}"
        );
    };
    assert!(
        e.contains("WRONGPASS") || e.contains("uthentication"),
        "{e}"
    );
    // No client certificate: the server ends the handshake.
    let ca_only = TlsOptions {
        ca_pem: certificates(&tls).ca_pem,
        ..TlsOptions::default()
    };
    let e = attempt(RedisConfig::new(tls.url_as("floodgate", "s3cret")).with_tls(ca_only)).await;
    assert_ne!(store_error_kind(e), StoreErrorKind::Script);
    // The system's roots do not know the test CA.
    let no_ca = TlsOptions {
        ca_pem: None,
        ..certificates(&tls)
    };
    let e = attempt(RedisConfig::new(tls.url_as("floodgate", "s3cret")).with_tls(no_ca)).await;
    assert_ne!(store_error_kind(e), StoreErrorKind::Script);
    // Plain TCP to the TLS port.
    let plain = format!("redis://floodgate:s3cret@127.0.0.1:{}/0", tls.port());
    let e = attempt(RedisConfig::new(plain)).await;
    assert_ne!(store_error_kind(e), StoreErrorKind::Script);
}

#[test]
fn tls_options_name_the_bad_item() {
    let missing = TlsOptions::from_files(
        Some(std::path::Path::new("/nonexistent/ca.pem")),
        None,
        None,
    );
    assert!(matches!(
        missing,
        Err(ConfigError::TlsFile {
            what: TlsItem::Ca,
            ..
        })
    ));
    let not_pem = TlsOptions {
        ca_pem: Some(b"not a certificate".to_vec()),
        ..TlsOptions::default()
    };
    assert!(matches!(
        not_pem.validate(),
        Err(ConfigError::TlsPem {
            what: TlsItem::Ca,
            ..
        })
    ));
    let key_without_cert = TlsOptions {
        client_key_pem: Some(b"x".to_vec()),
        ..TlsOptions::default()
    };
    assert!(matches!(
        key_without_cert.validate(),
        Err(ConfigError::TlsPem {
            what: TlsItem::ClientCert,
            ..
        })
    ));
    // Certificates without any rediss:// URL are a mistake.
    let tls_unused = RedisConfig::new("redis://127.0.0.1:6379/0").with_tls(TlsOptions {
        ca_pem: Some(Vec::new()),
        ..TlsOptions::default()
    });
    assert!(tls_unused.validate().is_err());
}
