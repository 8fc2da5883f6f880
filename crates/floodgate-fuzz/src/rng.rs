//! Where a generator's choices come from: a seed, or the engine's bytes.
//!
//! Every target builds its input from a grammar by drawing from an [`Rng`].
//! Seeded, the draws come from SplitMix64: `cargo test`'s short pass and
//! `floodgate-fuzz replay --seed` name an input by its seed. Under the
//! coverage-guided engine ([`Rng::from_choices`]), the draws are read from
//! the engine's input bytes, so every byte AFL++ mutates is a decision of
//! the grammar (which section, which value, how long a string, which byte
//! to flip), and coverage tells it which decisions reach new code.
//!
//! SplitMix64 rather than a crate's generator: a seeded input is named by
//! its seed, so the sequence a seed produces must never change with a
//! dependency upgrade.

/// A generator's source of choices: seeded SplitMix64 (Steele, Lea and
/// Flood: one `u64` of state, passes BigCrush, every seed gives a
/// full-period sequence), or a byte string read front to back.
#[derive(Debug, Clone)]
pub struct Rng(Source);

#[derive(Debug, Clone)]
enum Source {
    /// SplitMix64's state.
    Seeded(u64),
    /// The engine's input and how much of it the draws have read.
    Choices { data: Vec<u8>, read: usize },
}

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Mixes `x` into a well-spread 64-bit value (SplitMix64's finaliser).
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The seed of input number `index` of a run seeded with `run_seed`: what a
/// failure report prints and `replay --seed` takes.
pub fn input_seed(run_seed: u64, index: u64) -> u64 {
    mix(run_seed ^ mix(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(Source::Seeded(seed))
    }

    /// A generator whose draws are read from `data`, the coverage-guided
    /// engine's input. A draw below `n` reads only the bytes `n` needs (one
    /// for most choices), so one mutated byte changes one decision; past
    /// the end every draw is 0, so a short input makes a small one (every
    /// length 0, every choice the first) and the engine's trimming works.
    pub fn from_choices(data: &[u8]) -> Self {
        Rng(Source::Choices {
            data: data.to_vec(),
            read: 0,
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        match &mut self.0 {
            Source::Seeded(state) => {
                *state = state.wrapping_add(GAMMA);
                mix(*state)
            }
            Source::Choices { .. } => self.read(8),
        }
    }

    /// One random byte.
    pub fn byte(&mut self) -> u8 {
        match self.0 {
            // The low byte of a whole draw: what seeded runs have always
            // used, so recorded seeds keep naming the same inputs.
            Source::Seeded(_) => self.next_u64() as u8,
            Source::Choices { .. } => self.read(1) as u8,
        }
    }

    /// Uniform in `0..n`; `0` when `n` is zero.
    pub fn below(&mut self, n: u64) -> u64 {
        match self.0 {
            // Lemire's multiply-shift: the bias is below 2^-64 per draw,
            // which no fuzz run will notice.
            Source::Seeded(_) => ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64,
            Source::Choices { .. } if n <= 1 => 0,
            Source::Choices { .. } => {
                let bits = u64::BITS - (n - 1).leading_zeros();
                self.read(bits.div_ceil(8) as usize) % n
            }
        }
    }

    /// The next `count` (at most 8) bytes of a choice string, big-endian,
    /// zeros past its end.
    fn read(&mut self, count: usize) -> u64 {
        let Source::Choices { data, read } = &mut self.0 else {
            unreachable!("only a choice string is read")
        };
        let mut value = 0;
        for _ in 0..count {
            value = (value << 8) | u64::from(data.get(*read).copied().unwrap_or(0));
            *read += 1;
        }
        value
    }

    /// Uniform in `0..n` as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True once in `n` draws.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    ///
    /// # Panics
    /// When `items` is empty: a bug in a generator.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// A length that is usually small, sometimes around `max`: most inputs
    /// stay quick, some reach the size limits.
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(10) {
            0 => self.index(max + 1),
            1 => max.saturating_sub(self.index(4)),
            _ => self.index(max.min(16) + 1),
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A random Unicode scalar, weighted towards ASCII, with the characters
    /// parsers trip on (NUL, quotes, braces, separators, a BOM, an RTL mark,
    /// a four-byte emoji) more often than chance would pick them.
    pub fn char(&mut self) -> char {
        const AWKWARD: &[char] = &[
            '\0',
            '"',
            '\'',
            '\\',
            '{',
            '}',
            '[',
            ']',
            ':',
            ';',
            ',',
            '=',
            '%',
            '|',
            '/',
            ' ',
            '\t',
            '\n',
            '\r',
            '#',
            '.',
            '-',
            '_',
            '\u{7f}',
            '\u{80}',
            '\u{a0}',
            'é',
            '\u{feff}',
            '\u{200f}',
            '\u{fffd}',
            '😀',
            '\u{10ffff}',
        ];
        match self.below(8) {
            0 | 1 => *self.pick(AWKWARD),
            2 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
            _ => char::from(self.range(0x20, 0x7e) as u8),
        }
    }

    /// A random string of `n` characters from [`Rng::char`].
    pub fn string(&mut self, n: usize) -> String {
        (0..n).map(|_| self.char()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_sequence() {
        // Pinned values: a change here would make every recorded seed lie.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_ne!(input_seed(1, 0), input_seed(1, 1));
        assert_ne!(input_seed(1, 0), input_seed(2, 0));
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            assert!(r.below(3) < 3);
            let v = r.range(5, 9);
            assert!((5..=9).contains(&v));
            assert!(r.len(40) <= 40);
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(4, 4), 4);
        let _ = r.range(0, u64::MAX);
    }

    #[test]
    fn choices_read_what_each_draw_needs_then_zeros() {
        let mut r = Rng::from_choices(&[7, 0x01, 0x02, 200, 0xff]);
        assert_eq!(r.below(10), 7);
        // 1000 needs two bytes: 0x0102 = 258.
        assert_eq!(r.below(1000), 258);
        assert_eq!(r.byte(), 200);
        assert_eq!(r.below(4), 0xff % 4);
        assert_eq!(r.below(1), 0);
        assert_eq!(r.below(100), 0);
        assert_eq!(r.next_u64(), 0);
        assert!(r.percent(1));
        assert_eq!(r.len(40), 0);
    }
}
