//! The validated configuration, as the rest of floodgate reads it.

use std::path::PathBuf;

use floodgate_tower::{AccessLists, ClientIpConfig, LimiterConfig, Rule, Target};

use super::admin::AdminSettings;
use super::grpc::GrpcSettings;
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
    /// `[grpc]`.
    pub grpc: GrpcSettings,
    /// `[access]` allow list: bypasses every rule.
    pub allow: Vec<Target>,
    /// `[access]` deny list: always 403.
    pub deny: Vec<Target>,
    /// `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
}

impl Settings {
    /// What the limiter enforces: the rules, the access lists, who is a
    /// trusted proxy, and how store failures and paths are handled.
    pub fn limiter_config(&self) -> LimiterConfig {
        LimiterConfig {
            rules: self.rules.clone(),
            access: AccessLists {
                allow: self.allow.clone(),
                deny: self.deny.clone(),
            },
            client_ip: ClientIpConfig {
                trusted_proxies: self.server.trusted_proxies.clone(),
                ipv6_prefix: self.server.ipv6_prefix,
                ..ClientIpConfig::default()
            },
            on_error: self.store.on_error,
            timeout: self.store.timeout,
            local_max_keys: self.store.max_keys,
            encoded_slashes: self.server.encoded_slashes,
        }
    }
}
