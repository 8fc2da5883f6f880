//! Tests of [`gcra`](super) through [`LimitState`], as a store drives it.
//!
//! In a file of their own: they use `algorithm/mod.rs` (`LimitState`,
//! `test_support`), which uses `gcra.rs`, so inside `gcra.rs` they would
//! make the two files import each other.

use super::State;
use crate::algorithm::LimitState;
use crate::algorithm::test_support::*;
use crate::policy::Algorithm::TokenBucket;

#[test]
fn a_full_bucket_empties_then_refills_one_unit_per_interval() {
    // 10 per 10 s: one unit every second, burst 10.
    let p = policy(TokenBucket, 10, 10);
    let mut s = LimitState::fresh(TokenBucket);
    for k in 1..=10 {
        assert_admitted(take(&mut s, &p, T, 1), 10 - k, k * SEC);
    }
    assert_refused(take(&mut s, &p, T, 1), 0, SEC, 10 * SEC);
    assert_refused(take(&mut s, &p, T + SEC - 1, 1), 0, 1, 9 * SEC + 1);
    assert_admitted(take(&mut s, &p, T + SEC, 1), 0, 10 * SEC);
    assert_eq!(s, LimitState::TokenBucket(State { tat: T + 11 * SEC }));
}

#[test]
fn burst_caps_what_an_idle_key_can_take_at_once() {
    let p = policy(TokenBucket, 10, 10)
        .with_burst(3)
        .expect("valid burst");
    let mut s = LimitState::fresh(TokenBucket);
    for k in 1..=3 {
        assert_admitted(take(&mut s, &p, T, 1), 3 - k, k * SEC);
    }
    assert_refused(take(&mut s, &p, T, 1), 0, SEC, 3 * SEC);
    // Two seconds later two units have come back.
    assert_refused(take(&mut s, &p, T + 2 * SEC, 3), 2, SEC, SEC);
    assert_admitted(take(&mut s, &p, T + 2 * SEC, 2), 0, 3 * SEC);
}

#[test]
fn a_cost_waits_for_as_many_units() {
    let p = policy(TokenBucket, 10, 10);
    let mut s = LimitState::fresh(TokenBucket);
    assert_admitted(take(&mut s, &p, T, 4), 6, 4 * SEC);
    // 7 units need one more than the 6 left: one interval.
    assert_refused(take(&mut s, &p, T, 7), 6, SEC, 4 * SEC);
    assert_refused(take(&mut s, &p, T + SEC - 1, 7), 6, 1, 3 * SEC + 1);
    assert_admitted(take(&mut s, &p, T + SEC, 7), 0, 10 * SEC);
}

#[test]
fn the_emission_interval_rounds_up() {
    // 3 per second: 333_334 µs a unit, never faster than the limit.
    let p = policy(TokenBucket, 3, 1);
    let mut s = LimitState::fresh(TokenBucket);
    for _ in 0..3 {
        assert!(take(&mut s, &p, T, 1).allowed);
    }
    assert_refused(take(&mut s, &p, T, 1), 0, 333_334, 1_000_002);
}

#[test]
fn a_clock_stepping_back_keeps_the_bucket_drained() {
    let p = policy(TokenBucket, 10, 10);
    let mut s = LimitState::fresh(TokenBucket);
    take(&mut s, &p, T + 5 * SEC, 10);
    // tat = T + 15 s; four seconds earlier than the fill nothing came back.
    assert_refused(take(&mut s, &p, T + SEC, 1), 0, 5 * SEC, 14 * SEC);
    let LimitState::TokenBucket(state) = s else {
        panic!("algorithm changed")
    };
    assert_eq!(super::expires_at(&state, &p), T + 15 * SEC);
    // Once the bucket is full again the state is as good as none.
    let at_expiry = LimitState::TokenBucket(state).decide(&p, T + 15 * SEC, 1);
    assert_eq!(
        at_expiry,
        LimitState::fresh(TokenBucket).decide(&p, T + 15 * SEC, 1)
    );
}
