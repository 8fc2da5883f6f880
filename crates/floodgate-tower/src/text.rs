//! Numbers and addresses appended to strings without `core::fmt` (digits by
//! `itoa`, two at a time): keys and RateLimit fields are written for every
//! request, and the formatting machinery (argument lists, a `dyn Write`,
//! padding support) costs several times the digits themselves.

use std::net::Ipv4Addr;

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `ip` in dotted decimal, as its `Display` does.
pub(crate) fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    out.reserve(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decimals_match_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn addresses_match_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.0.2.255",
            "255.255.255.255",
            "1.20.3.40",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut s = String::new();
            push_ipv4(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }
}
