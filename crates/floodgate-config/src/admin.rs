//! `[admin]`: where the admin API listens and the token that guards it.

use std::net::SocketAddr;

use serde::Deserialize;

use super::overrides::Overrides;
use super::problems::{Problems, Unknown, parse_addr};

/// Where the admin listener binds unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Admin tokens that examples show in place of a secret; a deployment that
/// kept one has an open admin API in all but name.
const PLACEHOLDER_TOKENS: [&str; 6] = [
    "...",
    "change-me",
    "changeme",
    "CHANGE_ME",
    "<token>",
    "token",
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where /metrics, /healthz, /readyz and /admin/* listen; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// Bearer token for /admin/*.
    pub token: Option<String>,
}

pub(super) fn validate_admin(raw: RawAdmin, o: &Overrides, p: &mut Problems) -> AdminSettings {
    p.unknown("admin", &raw.unknown, &["listen", "token"]);
    let listen = match (o.admin_listen.as_deref(), raw.listen.as_deref()) {
        (Some(text), _) => parse_addr(p, "FLOODGATE_ADMIN_LISTEN", text),
        (None, Some("")) => None,
        (None, Some(text)) => parse_addr(p, "admin.listen", text),
        (None, None) => DEFAULT_ADMIN_LISTEN.parse().ok(),
    };
    let token = o
        .admin_token
        .clone()
        .or(raw.token)
        .filter(|t| !t.is_empty());
    if let Some(t) = &token
        && PLACEHOLDER_TOKENS.contains(&t.as_str())
    {
        p.add(
            "admin.token",
            format!("{t:?} is the example's placeholder, not a secret: make one with `openssl rand -hex 32`"),
        );
    }
    if let (Some(addr), None) = (listen, &token)
        && !addr.ip().is_loopback()
    {
        p.add(
            "admin.token",
            format!("admin.listen {addr} is not a loopback address, so a token is required (admin.token or FLOODGATE_ADMIN_TOKEN)"),
        );
    }
    AdminSettings { listen, token }
}
