//! Values from the environment and the command line, which win over the
//! file.

use std::net::SocketAddr;

/// Values taken from the environment and the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `FLOODGATE_REDIS_URL`: selects the Redis backend with this URL.
    pub redis_url: Option<String>,
    /// `FLOODGATE_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `FLOODGATE_ADMIN_LISTEN`: the admin listener's address, so several
    /// instances started from one config file (PM2 apps, systemd template
    /// units) each get their own `/metrics` and `/readyz`. Checked like
    /// `admin.listen`.
    pub admin_listen: Option<String>,
}

impl Overrides {
    /// The overrides found in the environment.
    pub fn from_env() -> Self {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Overrides {
            listen: None,
            redis_url: non_empty("FLOODGATE_REDIS_URL"),
            admin_token: non_empty("FLOODGATE_ADMIN_TOKEN"),
            admin_listen: non_empty("FLOODGATE_ADMIN_LISTEN"),
        }
    }
}
