//! A set of [`Target`]s looked up by request in time independent of its size.
//!
//! Access lists are short, but block lists can hold thousands of entries
//! during an attack, and they are consulted on every request. Addresses are
//! found with one hash lookup, networks with one lookup per distinct prefix
//! length, headers with one lookup per value of each listed header name.

use std::collections::HashMap;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

use crate::target::Target;

/// A target and its value.
type Entry<V> = (Target, V);

/// The networks of one family and prefix length, keyed by their truncated
/// address.
#[derive(Debug, Clone)]
struct NetGroup<V> {
    v4: bool,
    prefix: u8,
    nets: HashMap<IpNet, Entry<V>>,
}

/// Targets, each with a value (`()` for access lists, an expiry for blocks).
#[derive(Debug, Clone)]
pub(crate) struct TargetSet<V> {
    addrs: HashMap<IpAddr, Entry<V>>,
    /// Networks grouped by family and prefix length.
    nets: Vec<NetGroup<V>>,
    headers: HashMap<HeaderName, HashMap<Box<[u8]>, Entry<V>>>,
}

impl<V> Default for TargetSet<V> {
    fn default() -> Self {
        TargetSet {
            addrs: HashMap::new(),
            nets: Vec::new(),
            headers: HashMap::new(),
        }
    }
}

impl<V> TargetSet<V> {
    /// A set of `targets`, each with `value`.
    pub(crate) fn from_targets<'a>(targets: impl IntoIterator<Item = &'a Target>, value: V) -> Self
    where
        V: Clone,
    {
        let mut set = TargetSet::default();
        for t in targets {
            set.insert(t.clone(), value.clone());
        }
        set
    }

    /// Adds `target` (replacing the same target's value).
    pub(crate) fn insert(&mut self, target: Target, value: V) {
        match &target {
            Target::Ip(ip) => {
                self.addrs.insert(ip.to_canonical(), (target, value));
            }
            Target::Net(net) => {
                let net = net.trunc();
                let (v4, prefix) = (net.addr().is_ipv4(), net.prefix_len());
                let i = match self
                    .nets
                    .iter()
                    .position(|g| g.v4 == v4 && g.prefix == prefix)
                {
                    Some(i) => i,
                    None => {
                        self.nets.push(NetGroup {
                            v4,
                            prefix,
                            nets: HashMap::new(),
                        });
                        self.nets.len() - 1
                    }
                };
                self.nets[i].nets.insert(net, (target, value));
            }
            Target::Header { name, value: v } => {
                let key: Box<[u8]> = v.as_bytes().into();
                self.headers
                    .entry(name.clone())
                    .or_default()
                    .insert(key, (target, value));
            }
        }
    }

    /// Removes `target`; returns whether it was there.
    pub(crate) fn remove(&mut self, target: &Target) -> bool {
        match target {
            Target::Ip(ip) => self.addrs.remove(&ip.to_canonical()).is_some(),
            Target::Net(net) => {
                let net = net.trunc();
                let (v4, prefix) = (net.addr().is_ipv4(), net.prefix_len());
                let removed = self
                    .nets
                    .iter_mut()
                    .find(|g| g.v4 == v4 && g.prefix == prefix)
                    .is_some_and(|g| g.nets.remove(&net).is_some());
                self.nets.retain(|g| !g.nets.is_empty());
                removed
            }
            Target::Header { name, value } => {
                let Some(values) = self.headers.get_mut(name) else {
                    return false;
                };
                let removed = values.remove(value.as_bytes()).is_some();
                if values.is_empty() {
                    self.headers.remove(name);
                }
                removed
            }
        }
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.nets.is_empty() && self.headers.is_empty()
    }

    /// The number of targets held.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
            + self.nets.iter().map(|g| g.nets.len()).sum::<usize>()
            + self.headers.values().map(HashMap::len).sum::<usize>()
    }

    /// A target naming a request from `ip` (when known) with `headers` whose
    /// value passes `keep`.
    pub(crate) fn find(
        &self,
        ip: Option<IpAddr>,
        headers: &HeaderMap,
        keep: impl Fn(&V) -> bool,
    ) -> Option<&Entry<V>> {
        if self.is_empty() {
            return None;
        }
        if let Some(ip) = ip.map(|ip| ip.to_canonical()) {
            if let Some(hit) = self.addrs.get(&ip).filter(|(_, v)| keep(v)) {
                return Some(hit);
            }
            for group in self.nets.iter().filter(|g| g.v4 == ip.is_ipv4()) {
                let Ok(net) = IpNet::new(ip, group.prefix) else {
                    continue;
                };
                if let Some(hit) = group.nets.get(&net.trunc()).filter(|(_, v)| keep(v)) {
                    return Some(hit);
                }
            }
        }
        for (name, values) in &self.headers {
            for value in headers.get_all(name) {
                if let Some(hit) = values.get(value.as_bytes()).filter(|(_, v)| keep(v)) {
                    return Some(hit);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn finds_addresses_networks_and_headers() {
        let targets = [
            t("ip:192.0.2.7"),
            t("ip:198.51.100.0/24"),
            t("ip:10.0.0.0/8"),
            t("ip:2001:db8:1::/48"),
            t("header:x-api-key:leaked"),
        ];
        let set = TargetSet::from_targets(&targets, ());
        assert_eq!(set.len(), 5);
        let none = HeaderMap::new();
        let found = |addr: &str| set.find(ip(addr), &none, |_| true).map(|(t, _)| t.clone());
        assert_eq!(found("192.0.2.7"), Some(t("ip:192.0.2.7")));
        assert_eq!(found("::ffff:192.0.2.7"), Some(t("ip:192.0.2.7")));
        assert_eq!(found("192.0.2.8"), None);
        assert_eq!(found("198.51.100.200"), Some(t("ip:198.51.100.0/24")));
        assert_eq!(found("10.200.0.1"), Some(t("ip:10.0.0.0/8")));
        assert_eq!(found("2001:db8:1:ffff::1"), Some(t("ip:2001:db8:1::/48")));
        assert_eq!(found("2001:db8:2::1"), None);
        assert!(set.find(None, &none, |_| true).is_none());

        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("leaked"));
        assert_eq!(
            set.find(None, &headers, |_| true).map(|(t, _)| t.clone()),
            Some(t("header:x-api-key:leaked"))
        );
    }

    #[test]
    fn keep_filters_and_remove_forgets() {
        let mut set = TargetSet::default();
        set.insert(t("ip:192.0.2.7"), 1u32);
        set.insert(t("ip:192.0.2.0/24"), 2u32);
        let none = HeaderMap::new();
        let hit = set.find(ip("192.0.2.7"), &none, |v| *v == 2).unwrap();
        assert_eq!(
            hit.0,
            t("ip:192.0.2.0/24"),
            "an expired exact entry falls through to the network"
        );
        assert!(set.remove(&t("ip:192.0.2.0/24")));
        assert!(!set.remove(&t("ip:192.0.2.0/24")));
        assert!(set.find(ip("192.0.2.7"), &none, |v| *v == 2).is_none());
        assert!(set.remove(&t("ip:192.0.2.7")));
        assert!(set.is_empty());
    }
}
