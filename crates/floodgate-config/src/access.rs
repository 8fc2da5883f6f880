//! `[access]`: the allow and deny lists.

use floodgate_tower::Target;
use serde::Deserialize;

use super::problems::{Problems, Unknown};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAccess {
    allow: Vec<String>,
    deny: Vec<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

pub(super) fn validate_access(raw: RawAccess, p: &mut Problems) -> (Vec<Target>, Vec<Target>) {
    p.unknown("access", &raw.unknown, &["allow", "deny"]);
    let mut parse_list = |name: &str, list: Vec<String>| -> Vec<Target> {
        list.iter()
            .filter_map(|text| match text.parse::<Target>() {
                Ok(t) => Some(t),
                Err(e) => {
                    p.add(format!("access.{name}"), format!("{text:?}: {e}"));
                    None
                }
            })
            .collect()
    };
    let allow = parse_list("allow", raw.allow);
    let deny = parse_list("deny", raw.deny);
    (allow, deny)
}
