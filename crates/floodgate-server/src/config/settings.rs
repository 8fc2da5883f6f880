//! The validated configuration, as the rest of floodgate reads it.

use std::path::PathBuf;

use floodgate_tower::{Rule, Target};

use super::admin::AdminSettings;
use super::server::ServerSettings;
use super::store::StoreSettings;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from; `None` for the built-in demo.
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[store]`.
    pub store: StoreSettings,
    /// `[admin]`.
    pub admin: AdminSettings,
    /// `[access]` allow list: bypasses every rule.
    pub allow: Vec<Target>,
    /// `[access]` deny list: always 403.
    pub deny: Vec<Target>,
    /// `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
}
