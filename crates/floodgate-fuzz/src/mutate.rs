//! Byte-level mutations of valid-looking inputs.
//!
//! A random byte string is rejected at its first byte; a valid input with a
//! few bytes flipped, inserted, cut or repeated gets deep into a parser first.
//! Each target builds a well-formed input from its own grammar, then hands it
//! here some of the time.

use crate::rng::Rng;

/// Bytes that change what a text-format parser does next.
const INTERESTING_BYTES: &[u8] = &[
    0x00, b'"', b'\'', b'\\', b'{', b'}', b'[', b']', b',', b':', b';', b'=', b'\n', b'\r', b'\t',
    b' ', b'/', b'%', b'#', b'.', b'-', b'+', b'0', b'9', b'e', 0x7f, 0x80, 0xc3, 0xe2, 0xf0, 0xff,
];

/// Applies one to `max_steps` random mutations to `data`, taking inserted
/// tokens from `dictionary` (the target's keywords and delimiters) some of
/// the time. `limit` bounds the result's length.
pub fn mutate(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    dictionary: &[&[u8]],
    max_steps: u64,
    limit: usize,
) {
    for _ in 0..rng.range(1, max_steps.max(1)) {
        step(rng, data, dictionary);
    }
    data.truncate(limit);
}

fn step(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    let len = data.len();
    let at = rng.index(len + 1);
    match rng.below(11) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.index(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Replace a byte with a delimiter, a digit, NUL or a UTF-8 lead byte.
        1 if len > 0 => {
            let i = rng.index(len);
            data[i] = *rng.pick(INTERESTING_BYTES);
        }
        // Insert a random or interesting byte.
        2 => {
            let b = if rng.percent(50) {
                rng.byte()
            } else {
                *rng.pick(INTERESTING_BYTES)
            };
            data.insert(at, b);
        }
        // Insert a keyword or delimiter of the format.
        3 | 4 if !dictionary.is_empty() => {
            let token = rng.pick(dictionary);
            data.splice(at..at, token.iter().copied());
        }
        // Delete a range.
        5 if len > 0 => {
            let start = rng.index(len);
            let n = rng.range(1, (len - start) as u64) as usize;
            data.drain(start..start + n);
        }
        // Duplicate a range in place (repeated sections, keys, elements).
        6 if len > 0 => {
            let start = rng.index(len);
            let n = rng.range(1, (len - start).min(256) as u64) as usize;
            let copy: Vec<u8> = data[start..start + n].to_vec();
            let to = rng.index(len + 1);
            data.splice(to..to, copy);
        }
        // Truncate.
        7 => data.truncate(at),
        // Overwrite a range with a copy of another (splice within the input).
        8 if len > 1 => {
            let from = rng.index(len);
            let to = rng.index(len);
            let n = rng.range(1, (len - from).min(len - to).min(64) as u64) as usize;
            let copy: Vec<u8> = data[from..from + n].to_vec();
            data[to..to + n].copy_from_slice(&copy);
        }
        // Replace a digit run with an extreme number.
        9 => {
            const NUMBERS: &[&[u8]] = &[
                b"0",
                b"-1",
                b"1",
                b"255",
                b"256",
                b"65535",
                b"65536",
                b"2147483648",
                b"4294967296",
                b"9007199254740993",
                b"9223372036854775807",
                b"-9223372036854775808",
                b"18446744073709551615",
                b"18446744073709551616",
                b"1e400",
                b"0.5",
                b"1000000000000",
                b"1000000000001",
            ];
            let number = rng.pick(NUMBERS);
            match data.iter().skip(at).position(u8::is_ascii_digit) {
                Some(offset) => {
                    let start = at + offset;
                    let end = data[start..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(data.len(), |e| start + e);
                    data.splice(start..end, number.iter().copied());
                }
                None => data.splice(at..at, number.iter().copied()).for_each(drop),
            }
        }
        // Repeat a short slice many times (long runs, deep nesting).
        _ if len > 0 => {
            let start = rng.index(len);
            let n = rng.range(1, (len - start).min(8) as u64) as usize;
            let times = rng.range(2, 2_000) as usize;
            let copy: Vec<u8> = data[start..start + n].repeat(times);
            let to = rng.index(len + 1);
            data.splice(to..to, copy);
        }
        _ => data.push(rng.byte()),
    }
}

/// `bytes` as lower-case hex, the way failing inputs are printed.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_never_panic_and_respect_the_limit() {
        let mut rng = Rng::new(42);
        for i in 0..20_000 {
            let mut data = match i % 3 {
                0 => Vec::new(),
                1 => vec![b'x'],
                _ => b"[server]\nlisten = \"127.0.0.1:8080\"\n".to_vec(),
            };
            mutate(&mut rng, &mut data, &[b"[[rule]]", b"="], 8, 4096);
            assert!(data.len() <= 4096);
        }
    }

    #[test]
    fn hex_is_lower_case_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
