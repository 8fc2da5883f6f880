//! Canonical request paths: the one spelling of a path that rules match and
//! that the request is passed on with.
//!
//! A client can spell one resource many ways: `/api/x`, `/%61pi/x`,
//! `/./api/x`, `/x/../api/x`, `//api/x`. Servers and proxies behind
//! floodgate (nginx, most frameworks) resolve all of them to `/api/x`, so a
//! rule that compared the raw spelling with `path_prefix = "/api/"` would be
//! walked past by every other spelling. [`canonical_path`] resolves them the
//! way those servers do, and the layer replaces the request's path with the
//! result, so what a rule matched is exactly what the inner service (or the
//! upstream, in the gateway) is given:
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986
//!    §2.3) are decoded; every other escape is kept, its hex digits in upper
//!    case (§6.2.2.1); an escape that is not `%` and two hex digits is an
//!    error (nginx answers those with 400 too);
//! 2. repeated slashes are merged (as nginx's `merge_slashes`, on by
//!    default, does before it resolves dot segments);
//! 3. dot segments are removed (§5.2.4): `.` goes, `..` takes the segment
//!    before it with it, and never climbs above the root.
//!
//! An encoded slash (`%2F`) or backslash (`%5C`) stays encoded, as reserved
//! characters must (§2.2); but nginx, and some frameworks, decode it and then
//! treat it as a separator, so `/%2Fapi/x` reaches them as `/api/x`.
//! [`EncodedSlashes::Reject`] refuses such paths instead.
//!
//! Paths stay case-sensitive (`/API/` is not `/api/`), as they are to nginx
//! and to the URI standard. The query string is left as it is.
//!
//! Hand-written rather than taken from a URL crate: `url` and `http` parse
//! and re-encode, but neither decodes unreserved escapes nor merges
//! slashes, and a rule must see what the servers behind it see.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// What a path with an encoded slash or backslash (`%2F`, `%5C`) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// Kept encoded: one segment, as the URI standard reads it.
    #[default]
    Keep,
    /// Refused with 400: the request never reaches a server that would
    /// decode it into a separator and route around a rule.
    Reject,
}

impl EncodedSlashes {
    /// The configuration name: `keep` or `reject`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EncodedSlashes::Keep => "keep",
            EncodedSlashes::Reject => "reject",
        }
    }
}

impl fmt::Display for EncodedSlashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EncodedSlashes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep" => Ok(EncodedSlashes::Keep),
            "reject" => Ok(EncodedSlashes::Reject),
            _ => Err(format!(
                "unknown encoded_slashes {s:?} (expected keep or reject)"
            )),
        }
    }
}

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    MalformedEscape,
    /// `%2F` or `%5C` under [`EncodedSlashes::Reject`].
    #[error("the path has an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
}

/// The canonical form of the request path `raw` (without its query):
/// borrowed when `raw` already is canonical, as nearly every path is. A
/// path that does not start with `/` (`*` of `OPTIONS *`) is returned as it
/// is.
///
/// ```
/// use floodgate_tower::path::{EncodedSlashes, canonical_path};
///
/// let keep = EncodedSlashes::Keep;
/// assert_eq!(canonical_path("/%61pi/./v1//x/../items", keep).unwrap(), "/api/v1/items");
/// assert_eq!(canonical_path("/a%2fb", keep).unwrap(), "/a%2Fb");
/// assert!(canonical_path("/a%2fb", EncodedSlashes::Reject).is_err());
/// ```
pub fn canonical_path(raw: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') || is_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw, slashes)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// Whether `path` (starting with `/`) has no escape, no empty segment and no
/// dot segment: the fast path, one scan and no allocation.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.contains(&b'%') {
        return false;
    }
    // Each segment starts after a '/'.
    let mut start = 1;
    while start <= bytes.len() {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |i| start + i);
        let segment = &bytes[start..end];
        let last = end == bytes.len();
        // An empty segment is `//`, unless it is the end after a final '/'.
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
        start = end + 1;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `raw` with unreserved escapes decoded and the others in upper case.
fn decode_unreserved(raw: &str, slashes: EncodedSlashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Everything but '%' is copied; a run of them at once keeps
            // multi-byte characters whole.
            let run = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&raw[i..run]);
            i = run;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::MalformedEscape);
        };
        let value = hi << 4 | lo;
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            if matches!(value, b'/' | b'\\') && slashes == EncodedSlashes::Reject {
                return Err(PathError::EncodedSlash);
            }
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

/// `path` (starting with `/`, escapes already handled) with repeated
/// slashes merged and dot segments removed. A path that ends in `/`, `/.`
/// or `/..` keeps a final `/`, as RFC 3986 §5.2.4 does.
fn resolve_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Whether the canonical path `path` starts with `prefix`, reading a
/// percent-escape of a reserved character other than `/` and `%` as that
/// character on both sides: nginx decodes them before it routes, so
/// `/a%3Ab/` reaches it as `/a:b/` and must meet a rule on `/a:b/`.
pub(crate) fn starts_with_prefix(path: &str, prefix: &str) -> bool {
    if !path.contains('%') && !prefix.contains('%') {
        return path.starts_with(prefix);
    }
    match_form(path).starts_with(&match_form(prefix))
}

/// `text` with every escape decoded except `%2F` and `%25`, whose decoding
/// would change where segments end or what a later `%` means; those keep
/// their escape, in upper case.
fn match_form(text: &str) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                Some(hi << 4 | lo)
            })
            .flatten();
        match escape {
            Some(b'/' | b'%') => {
                out.push(b'%');
                out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
                i += 3;
            }
            Some(value) => {
                out.push(value);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn canon(raw: &str) -> String {
        canonical_path(raw, EncodedSlashes::Keep)
            .unwrap()
            .into_owned()
    }

    #[test]
    fn spellings_of_one_path() {
        for raw in [
            "/api/x",
            "/%61pi/x",
            "/%61%70%69/x",
            "/./api/x",
            "/x/../api/x",
            "/x/%2e%2e/api/x",
            "/x/%2E%2E/api/x",
            "/x/.%2e/api/x",
            "//api/x",
            "/api//x",
            "///api///x",
            "/api/./x",
            "/api/y/../x",
            "/../api/x",
            "/../../api/x",
            "/api/x/.",
        ] {
            let want = if raw.ends_with("/.") {
                "/api/x/"
            } else {
                "/api/x"
            };
            assert_eq!(canon(raw), want, "{raw}");
        }
    }

    #[test]
    fn already_canonical_paths_are_borrowed() {
        for raw in ["/", "/api/x", "/api/x/", "/a.b/..c/c..", "/.well-known/x"] {
            assert!(
                matches!(
                    canonical_path(raw, EncodedSlashes::Keep),
                    Ok(Cow::Borrowed(_))
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn trailing_dot_segments_keep_a_final_slash() {
        assert_eq!(canon("/a/b/.."), "/a/");
        assert_eq!(canon("/a/b/."), "/a/b/");
        assert_eq!(canon("/a/.."), "/");
        assert_eq!(canon("/.."), "/");
        assert_eq!(canon("//"), "/");
        assert_eq!(canon("/a//"), "/a/");
    }

    #[test]
    fn reserved_escapes_are_kept_in_upper_case() {
        assert_eq!(canon("/a%2fb"), "/a%2Fb");
        assert_eq!(canon("/a%3ab%20c"), "/a%3Ab%20c");
        assert_eq!(canon("/%25"), "/%25");
        assert_eq!(canon("/%2561"), "/%2561", "a decoded % never decodes again");
    }

    #[test]
    fn malformed_escapes_and_rejected_slashes() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%g0/x"] {
            assert_eq!(
                canonical_path(raw, EncodedSlashes::Keep),
                Err(PathError::MalformedEscape),
                "{raw}"
            );
        }
        for raw in ["/%2Fapi/x", "/api%2fx", "/%5Capi/x", "/a%5c"] {
            assert_eq!(
                canonical_path(raw, EncodedSlashes::Reject),
                Err(PathError::EncodedSlash),
                "{raw}"
            );
        }
    }

    #[test]
    fn non_origin_forms_are_left_alone() {
        assert_eq!(canon("*"), "*");
        assert_eq!(canon(""), "");
    }

    #[test]
    fn prefixes_compare_reserved_escapes_decoded() {
        assert!(starts_with_prefix("/api/x", "/api/"));
        assert!(!starts_with_prefix("/apix", "/api/"));
        assert!(starts_with_prefix("/a%3Ab/x", "/a:b/"));
        assert!(starts_with_prefix("/a:b/x", "/a%3ab/"));
        assert!(
            !starts_with_prefix("/api%2Fx", "/api/"),
            "%2F is no separator"
        );
        assert!(starts_with_prefix("/api%2fx", "/api%2F"));
        assert!(!starts_with_prefix("/%2541", "/A"), "%25 stays a literal %");
    }

    /// A resolver written from RFC 3986 alone, without a fast path: every
    /// escape but `%2F` and `%25` decoded, empty and `.` segments dropped,
    /// `..` popping. Compared to [`canonical_path`] and
    /// [`starts_with_prefix`] through what each says a path starts with.
    fn reference(raw: &str) -> Vec<u8> {
        let decoded = match_form(raw);
        let mut segments: Vec<&[u8]> = Vec::new();
        let mut trailing = false;
        for segment in decoded.split(|&b| b == b'/').skip(1) {
            trailing = matches!(segment, b"" | b"." | b"..");
            match segment {
                b"" | b"." => {}
                b".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let mut out = Vec::new();
        for s in &segments {
            out.push(b'/');
            out.extend_from_slice(s);
        }
        if trailing || segments.is_empty() {
            out.push(b'/');
        }
        out
    }

    fn pieces() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "/", "//", "a", "api", "x", ".", "..", "%2e", "%2E", "%2e%2E", ".%2e", "%61", "%61pi",
            "%41", "%2F", "%2f", "%3A", "%3a", ":", "%25", "%2561", "%7E", "~", "-", "%20", "b.c",
            "...",
        ]);
        prop::collection::vec(piece, 0..12).prop_map(|p| format!("/{}", p.concat()))
    }

    proptest::proptest! {
        #[test]
        fn canonical_paths_are_canonical(raw in pieces()) {
            let once = canonical_path(&raw, EncodedSlashes::Keep).unwrap().into_owned();
            let twice = canonical_path(&once, EncodedSlashes::Keep).unwrap();
            proptest::prop_assert_eq!(&once, &*twice, "idempotent");
            for escape in once.split('%').skip(1) {
                let hex = escape.get(..2).unwrap_or_default();
                let value = u8::from_str_radix(hex, 16).unwrap_or(b'a');
                proptest::prop_assert!(
                    hex == hex.to_ascii_uppercase() && !is_unreserved(value),
                    "escape %{} left in {}", hex, once
                );
            }
            proptest::prop_assert!(!once.contains("//"));
            proptest::prop_assert!(
                once.split('/').all(|s| s != "." && s != ".."),
                "dot segment in {}", once
            );
        }

        #[test]
        fn prefix_matching_agrees_with_the_reference(raw in pieces(), prefix in proptest::sample::select(vec![
            "/", "/api/", "/api", "/a:b/", "/x/api/", "/a%2Fb", "/%25", "/~", "/a/",
        ])) {
            let canonical = canonical_path(&raw, EncodedSlashes::Keep).unwrap();
            let want = reference(&raw).starts_with(&match_form(prefix));
            proptest::prop_assert_eq!(starts_with_prefix(&canonical, prefix), want,
                "{} (canonical {}) against {}", raw, canonical, prefix);
        }
    }
}
