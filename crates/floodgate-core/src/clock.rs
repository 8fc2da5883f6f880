//! Time, as the limiter sees it.
//!
//! Algorithms never read a clock: callers pass `now` in. Stores get `now` from a
//! [`Clock`], so tests drive time with a [`ManualClock`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch.
///
/// Microseconds keep every value below 2^53 for the next few centuries, so the
/// Redis Lua scripts (whose numbers are doubles) compute with the same exact
/// integers as the Rust code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(micros_of(d)))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// The current system time (see [`SystemClock`] for how it is read).
    #[inline]
    pub fn now() -> Self {
        Timestamp(WallClock::get().now_us())
    }
}

/// Whole microseconds in `d`, saturating at `u64::MAX`.
pub fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock, read cheaply.
///
/// Reading the OS wall clock costs 50–150 ns on many virtual machines, more
/// than a whole memory-store decision. So the time is a fast monotonic
/// counter (the CPU's TSC, through `quanta`) plus an offset to the wall
/// clock, and the offset is re-read from the OS clock once a second. Within
/// a second the clock never steps; a resync may move it by the counter's
/// drift over that second (microseconds), which every algorithm tolerates.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The process-wide state behind [`SystemClock`].
struct WallClock {
    counter: quanta::Clock,
    /// The counter's raw reading at start: the clock's zero.
    base: u64,
    /// Microseconds per counter tick, in fixed point with
    /// [`TICK_SCALE_BITS`] fractional bits, from quanta's calibration.
    us_per_tick: u64,
    /// Wall-clock µs minus counter µs since `base`.
    offset_us: AtomicU64,
    /// Counter µs since `base` at the last resync.
    synced_at_us: AtomicU64,
}

/// How often the offset to the OS wall clock is re-read.
const RESYNC_EVERY_US: u64 = 1_000_000;

/// Fractional bits of [`WallClock::us_per_tick`]: an error below 10^-8,
/// a hundredth of a microsecond per second between resyncs.
const TICK_SCALE_BITS: u32 = 40;

/// Ticks over which the counter's rate is read from quanta's calibration.
const CALIBRATION_TICKS: u64 = 1 << 40;

impl WallClock {
    #[inline]
    fn get() -> &'static WallClock {
        static CLOCK: OnceLock<WallClock> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let counter = quanta::Clock::new();
            let base = counter.raw();
            // µs per tick = ns over CALIBRATION_TICKS / 1000 / CALIBRATION_TICKS.
            let ns = u128::from(counter.delta_as_nanos(0, CALIBRATION_TICKS));
            let us_per_tick = (ns << TICK_SCALE_BITS) / (1000 * u128::from(CALIBRATION_TICKS));
            let clock = WallClock {
                counter,
                base,
                us_per_tick: u64::try_from(us_per_tick).unwrap_or(u64::MAX),
                offset_us: AtomicU64::new(0),
                synced_at_us: AtomicU64::new(0),
            };
            clock.resync(0);
            clock
        })
    }

    fn resync(&self, counter_us: u64) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, micros_of);
        self.offset_us
            .store(wall.wrapping_sub(counter_us), Ordering::Relaxed);
        self.synced_at_us.store(counter_us, Ordering::Relaxed);
    }

    #[inline]
    fn now_us(&self) -> u64 {
        // Raw counter to µs in one multiply and a constant shift: no
        // `Instant` or `Duration` on the way, and no second step from ns.
        let ticks = self.counter.raw().saturating_sub(self.base);
        let counter_us =
            ((u128::from(ticks) * u128::from(self.us_per_tick)) >> TICK_SCALE_BITS) as u64;
        if counter_us.saturating_sub(self.synced_at_us.load(Ordering::Relaxed)) >= RESYNC_EVERY_US {
            self.resync(counter_us);
        }
        counter_us.wrapping_add(self.offset_us.load(Ordering::Relaxed))
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use floodgate_core::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Timestamp::from_micros(1_000));
/// clock.advance(Duration::from_millis(1));
/// assert_eq!(clock.now(), Timestamp::from_micros(2_000));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            micros: Arc::new(AtomicU64::new(start.as_micros())),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.micros.fetch_add(micros_of(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t` (which may be earlier than the current time).
    pub fn set(&self, t: Timestamp) {
        self.micros.store(t.as_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.micros.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new(Timestamp::from_micros(5));
        let b = a.clone();
        a.advance(Duration::from_micros(10));
        assert_eq!(b.now().as_micros(), 15);
        b.set(Timestamp::from_micros(3));
        assert_eq!(a.now().as_micros(), 3);
    }

    #[test]
    fn saturating_arithmetic() {
        let t = Timestamp::from_micros(u64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(1)).as_micros(),
            u64::MAX
        );
        assert_eq!(
            Timestamp::from_micros(1).saturating_since(Timestamp::from_micros(9)),
            Duration::ZERO
        );
    }

    #[test]
    fn system_clock_follows_the_os_wall_clock() {
        let os = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, micros_of)
        };
        let before = os();
        let ours = SystemClock.now().as_micros();
        let after = os();
        // The offset is read at start-up, so the two agree to well within a
        // millisecond (allowing for a descheduled thread: 50 ms).
        assert!(
            ours + 50_000 >= before && ours <= after + 50_000,
            "{before} {ours} {after}"
        );
        let mut last = ours;
        for _ in 0..10_000 {
            let t = SystemClock.now().as_micros();
            assert!(t >= last, "stepped back from {last} to {t}");
            last = t;
        }
    }
}
