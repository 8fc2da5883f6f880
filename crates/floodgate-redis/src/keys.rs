//! Redis key names.
//!
//! `<prefix>:{<hash tag>}:<rule>:state` and `<prefix>:{<hash tag>}:<rule>:block`
//! hold the counting state and the penalty block of one (rule, key). The hash
//! tag is the client key itself, escaped, so every key of one identity — under
//! every rule — lands in one Redis Cluster slot, and a script touching them
//! runs unchanged on a cluster. `<prefix>:blocks` is the block registry.
//! `<prefix>:{<hash tag>}:guard` is named in dry runs and never written.
//! `<prefix>:{top}:summaries` and `<prefix>:{top}:expiry` hold every
//! instance's top-clients summary (one slot: one call reads them all).

/// Builds the names of every key the store uses.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// Keys under `prefix` (validated by the config: no `{` or `}`).
    pub(crate) fn new(prefix: &str) -> Self {
        KeyLayout {
            prefix: prefix.to_owned(),
        }
    }

    /// The counting state of (rule, key).
    pub(crate) fn state(&self, rule: &str, key: &str) -> String {
        let mut name = String::new();
        self.write_state(&mut name, rule, key);
        name
    }

    /// The penalty block of (rule, key).
    pub(crate) fn block(&self, rule: &str, key: &str) -> String {
        let mut name = String::new();
        self.write_block(&mut name, rule, key);
        name
    }

    /// [`KeyLayout::state`] and [`KeyLayout::block`] of (rule, key), the
    /// second made from the first (they differ only in their suffix, of the
    /// same length) rather than escaped again.
    pub(crate) fn state_and_block(&self, rule: &str, key: &str) -> (String, String) {
        let state = self.state(rule, key);
        let mut block = String::with_capacity(state.len());
        block.push_str(&state[..state.len() - "state".len()]);
        block.push_str("block");
        (state, block)
    }

    /// [`KeyLayout::state`] into `out` (cleared first), so a caller naming
    /// many keys can reuse one buffer.
    pub(crate) fn write_state(&self, out: &mut String, rule: &str, key: &str) {
        self.write_rule_key(out, rule, key, "state");
    }

    /// The held slots of (rule, key), a concurrency limit's.
    pub(crate) fn slots(&self, rule: &str, key: &str) -> String {
        let mut name = String::new();
        self.write_rule_key(&mut name, rule, key, "slots");
        name
    }

    /// [`KeyLayout::block`] into `out` (cleared first).
    pub(crate) fn write_block(&self, out: &mut String, rule: &str, key: &str) {
        self.write_rule_key(out, rule, key, "block");
    }

    /// A key in the slot of `key` that no other layout name can be and that
    /// is never written: the state key of the never-fitting check a dry run
    /// adds (see `RedisStore::check`). Every other name ends in `:state` or
    /// `:block`.
    pub(crate) fn write_guard(&self, out: &mut String, key: &str) {
        out.clear();
        out.push_str(&self.prefix);
        out.push_str(":{");
        push_hash_tag(out, key);
        out.push_str("}:guard");
    }

    /// The hash listing every block in force.
    pub(crate) fn registry(&self) -> String {
        format!("{}:blocks", self.prefix)
    }

    /// The five keys of the per-key overrides (one hash slot, the
    /// `{overrides}` tag): the map, the change log, the last change's
    /// number, the expiry index and the epoch (see `overrides.lua`). No client key's
    /// name ends like these.
    pub(crate) fn overrides(&self) -> [String; 5] {
        ["map", "log", "seq", "expiry", "epoch"]
            .map(|part| format!("{}:{{overrides}}:{part}", self.prefix))
    }

    /// The two keys of the top-clients summaries (one hash slot, the
    /// `{top}` tag): the summaries by instance and their expiry index (see
    /// `top.lua`). No client key's name ends like these.
    pub(crate) fn top(&self) -> [String; 2] {
        ["summaries", "expiry"].map(|part| format!("{}:{{top}}:{part}", self.prefix))
    }

    fn write_rule_key(&self, out: &mut String, rule: &str, key: &str, suffix: &str) {
        // The rule sits between the tag's `}` and a fixed suffix, so even a
        // rule name containing `:` or braces cannot make two keys collide.
        out.clear();
        out.reserve(self.prefix.len() + key.len() + rule.len() + suffix.len() + 8);
        out.push_str(&self.prefix);
        out.push_str(":{");
        push_hash_tag(out, key);
        out.push_str("}:");
        out.push_str(rule);
        out.push(':');
        out.push_str(suffix);
    }
}

/// The registry field of a block: `<byte length of target>:<target><source>`,
/// unambiguous whatever the target and source contain.
pub(crate) fn registry_field(target: &str, source: &str) -> String {
    format!("{}:{target}{source}", target.len())
}

/// Target and source of a registry field.
pub(crate) fn split_registry_field(field: &str) -> Option<(&str, &str)> {
    let (len, rest) = field.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len) {
        return None;
    }
    Some(rest.split_at(len))
}

/// Appends the hash tag of a client key to `out`: the key with `%`, `{` and
/// `}` percent-escaped (so the tag never closes early and distinct keys get
/// distinct tags), and `%` alone for the empty key (an empty `{}` would not
/// be a hash tag, and a lone `%` is never the escape of anything else).
fn push_hash_tag(out: &mut String, key: &str) {
    if key.is_empty() {
        out.push('%');
        return;
    }
    // Runs of plain characters are copied whole; the three escaped ones are
    // ASCII, so every split falls on a character boundary.
    let mut rest = key;
    while let Some(at) = rest.bytes().position(|b| matches!(b, b'%' | b'{' | b'}')) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'%' => "%25",
            b'{' => "%7B",
            _ => "%7D",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_tag(key: &str) -> String {
        let mut tag = String::new();
        push_hash_tag(&mut tag, key);
        tag
    }

    /// What Redis Cluster hashes for `key`: the first `{...}` with content, or
    /// the whole key.
    fn slot_input(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn keys_of_one_identity_share_a_hash_tag() {
        let keys = KeyLayout::new("fg");
        for key in [
            "ip:192.0.2.1",
            "",
            "a{b}c",
            "}{",
            "%7B",
            "header:x-api-key:a}b",
        ] {
            let tag = slot_input(&keys.state("api", key)).to_owned();
            assert_eq!(tag, hash_tag(key));
            assert_eq!(slot_input(&keys.block("api", key)), tag);
            assert_eq!(slot_input(&keys.state("login:{x}", key)), tag);
            let mut guard = String::new();
            keys.write_guard(&mut guard, key);
            assert_eq!(slot_input(&guard), tag);
        }
    }

    #[test]
    fn hash_tags_escape_each_special_character_in_place() {
        for (key, tag) in [
            ("ip:192.0.2.1", "ip:192.0.2.1"),
            ("%", "%25"),
            ("{}", "%7B%7D"),
            ("é{x}%ü", "é%7Bx%7D%25ü"),
            ("}}a{{", "%7D%7Da%7B%7B"),
            ("header:k:%7B", "header:k:%257B"),
        ] {
            assert_eq!(hash_tag(key), tag, "key {key:?}");
        }
    }

    #[test]
    fn hash_tags_are_injective() {
        let keys = [
            "", "%", "%25", "{", "%7B", "}", "%7D", "a", "a{", "a%7B", "%%",
        ];
        let tags: std::collections::HashSet<String> = keys.iter().map(|k| hash_tag(k)).collect();
        assert_eq!(tags.len(), keys.len());
        assert!(tags.iter().all(|t| !t.is_empty() && !t.contains('}')));
    }

    #[test]
    fn layout_is_readable() {
        let keys = KeyLayout::new("floodgate");
        assert_eq!(
            keys.state("api", "ip:192.0.2.1"),
            "floodgate:{ip:192.0.2.1}:api:state"
        );
        assert_eq!(keys.block("api", "a{b}"), "floodgate:{a%7Bb%7D}:api:block");
        assert_eq!(keys.registry(), "floodgate:blocks");
        let mut guard = String::new();
        keys.write_guard(&mut guard, "a{b}");
        assert_eq!(guard, "floodgate:{a%7Bb%7D}:guard");
    }

    #[test]
    fn state_and_block_name_the_keys_state_and_block_do() {
        let keys = KeyLayout::new("fg");
        for (rule, key) in [
            ("api", "ip:192.0.2.1"),
            ("r:{x}", "a{b}%"),
            ("", ""),
            ("é", "ü"),
        ] {
            assert_eq!(
                keys.state_and_block(rule, key),
                (keys.state(rule, key), keys.block(rule, key))
            );
        }
    }

    #[test]
    fn registry_fields_round_trip() {
        for (target, source) in [
            ("ip:1.2.3.4", "manual"),
            ("", "api"),
            ("7:x", "9:y"),
            ("é", "r"),
        ] {
            let field = registry_field(target, source);
            assert_eq!(split_registry_field(&field), Some((target, source)));
        }
        assert_eq!(split_registry_field("x"), None);
        assert_eq!(split_registry_field("9:short"), None);
    }
}
