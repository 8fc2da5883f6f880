//! # floodgate-config
//!
//! floodgate's config file: parsed in two steps so that one pass finds every
//! mistake, each named with its place (`server.listen`, `rule "api"
//! limit`), then turned into typed [`Settings`]; and what those settings
//! describe: the [`LimiterConfig`](floodgate_tower::LimiterConfig) of the
//! rules and access lists ([`Settings::limiter_config`]) and the store
//! ([`AnyStore::open`]). The `floodgate` binary reads its config with this
//! crate; a Rust app can read the same file, so the gateway and an
//! in-process layer share one config:
//!
//! ```no_run
//! use floodgate_config::{AnyStore, Overrides};
//! use floodgate_tower::{FloodgateLayer, Limiter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = floodgate_config::load("/etc/floodgate/floodgate.toml".as_ref(), &Overrides::from_env())?;
//! let limiter = Limiter::new(settings.limiter_config(), AnyStore::open(&settings.store)?)?;
//! let layer = FloodgateLayer::new(limiter);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! `RawConfig` mirrors the TOML loosely (strings for durations and names,
//! unknown fields collected rather than fatal); `validate` checks every
//! value. Modules:
//!
//! - `problems`: [`Problem`], [`ConfigError`] and the collector the sections
//!   report into;
//! - `overrides`: [`Overrides`] from the environment and the command line;
//! - `server`, `store`, `admin`, `access`, `rules`: one section each, its
//!   raw mirror, its typed settings and its checks;
//! - `settings`: [`Settings`], all sections together, and the limiter
//!   configuration they describe;
//! - `any_store`: [`AnyStore`], the memory or Redis store `[store]` names;
//! - `summary`: what `check-config` prints.
//!
//! This module wires them together: [`load`], [`parse`], [`demo`].

mod access;
mod admin;
mod any_store;
mod grpc;
mod overrides;
mod problems;
mod rules;
mod server;
mod settings;
mod store;
mod summary;

use std::path::Path;

use serde::Deserialize;

pub use self::admin::{AdminSettings, DEFAULT_ADMIN_LISTEN};
pub use self::any_store::AnyStore;
pub use self::grpc::GrpcSettings;
pub use self::overrides::Overrides;
pub use self::problems::{ConfigError, Problem};
pub use self::server::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_HEADER_BYTES, MAX_MAX_HEADER_BYTES,
    MIN_MAX_HEADER_BYTES, ServerSettings, parse_net,
};
pub use self::settings::Settings;
pub use self::store::{Backend, RedisLayout, StoreSettings};
pub use self::summary::summary;

use self::access::{RawAccess, validate_access};
use self::admin::{RawAdmin, validate_admin};
use self::grpc::{RawGrpc, validate_grpc};
use self::problems::{Problems, Unknown, line_col};
use self::rules::{RawRule, validate_rules};
use self::server::{RawServer, validate_server};
use self::store::{RawStore, validate_store};

/// The file as written. Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    server: RawServer,
    store: RawStore,
    admin: RawAdmin,
    grpc: RawGrpc,
    access: RawAccess,
    #[serde(rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        problems: vec![Problem {
            at: "file".into(),
            message: format!("cannot be read: {e}"),
        }],
    })?;
    parse(&text, Some(path), overrides)
}

/// Parses and validates config text.
pub fn parse(
    text: &str,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        file: file.map(Path::to_owned),
        problems: vec![Problem {
            at: e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or_else(|| "file".into()),
            message: e.message().to_owned(),
        }],
    })?;
    if sets_nothing(text) {
        // Every setting has a default, so an empty file would run the demo
        // API with no rules and no admin token: a truncated or blanked file
        // is far likelier than a wish for that.
        return Err(ConfigError {
            file: file.map(Path::to_owned),
            problems: vec![Problem {
                at: "file".into(),
                message: "sets nothing (it is empty or all comments); run `floodgate serve` without --config for the built-in demo".into(),
            }],
        });
    }
    raw.validate(file, overrides)
}

/// Whether TOML `text` holds no table and no key: blank or comments only.
fn sets_nothing(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#'))
}

impl RawConfig {
    /// Checks every value and builds [`Settings`], or lists every problem.
    pub fn validate(
        self,
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut p = Problems::default();
        p.unknown(
            "",
            &self.unknown,
            &["server", "store", "admin", "grpc", "access", "rule"],
        );
        let server = validate_server(self.server, overrides, &mut p);
        let store = validate_store(self.store, overrides, &mut p);
        let admin = validate_admin(self.admin, overrides, &mut p);
        let grpc = validate_grpc(self.grpc, &mut p);
        let (allow, deny) = validate_access(self.access, &mut p);
        let rules = validate_rules(self.rules, &mut p);
        if p.0.is_empty() {
            Ok(Settings {
                source: file.map(Path::to_owned),
                server,
                store,
                admin,
                grpc,
                allow,
                deny,
                rules,
            })
        } else {
            Err(ConfigError {
                file: file.map(Path::to_owned),
                problems: p.0,
            })
        }
    }
}

/// The built-in demo: memory store, the demo API, 10 requests per 10 s per IP on /api/.
pub fn demo(overrides: &Overrides) -> Settings {
    let text = r#"
[server]
listen = "127.0.0.1:8080"

[store]
backend = "memory"

[admin]
listen = "127.0.0.1:9090"

[[rule]]
name = "demo-per-ip"
match = { path_prefix = "/api/" }
key = "ip"
algorithm = "sliding_window"
limit = 10
window = "10s"
"#;
    match parse(text, None, overrides) {
        Ok(settings) => settings,
        Err(e) => panic!("the built-in demo config is invalid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::num::NonZeroU32;

    use super::*;

    fn admin_listen_with(file: &str, env: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
        let overrides = Overrides {
            admin_listen: env.map(str::to_owned),
            ..Overrides::default()
        };
        parse(file, None, &overrides).map(|s| s.admin.listen)
    }

    #[test]
    fn admin_listen_env_wins_over_the_file() {
        let file = "[admin]\nlisten = \"127.0.0.1:9090\"\n";
        assert_eq!(
            admin_listen_with(file, Some("127.0.0.1:9191"))
                .ok()
                .flatten(),
            "127.0.0.1:9191".parse().ok()
        );
        assert_eq!(
            admin_listen_with(file, None).ok().flatten(),
            "127.0.0.1:9090".parse().ok()
        );
        // It also enables an admin listener the file disabled.
        assert_eq!(
            admin_listen_with("[admin]\nlisten = \"\"\n", Some("127.0.0.1:9191"))
                .ok()
                .flatten(),
            "127.0.0.1:9191".parse().ok()
        );
    }

    #[test]
    fn a_bad_admin_listen_env_is_a_problem_naming_the_variable() {
        let err =
            admin_listen_with("[server]\n", Some("nine-thousand")).expect_err("must be refused");
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].at, "FLOODGATE_ADMIN_LISTEN");
    }

    #[test]
    fn problems_of_rules_sharing_a_name_say_which_rule() {
        let file = "[[rule]]\nname = \"a\"\nlimit = 1\nwindow = \"1m\"\nalgorithm = \"leaky\"\n\
                    [[rule]]\nname = \"b\"\nlimit = 1\nwindow = \"1m\"\n\
                    [[rule]]\nname = \"a\"\nlimit = 0\nwindow = \"1m\"\n";
        let err = parse(file, None, &Overrides::default()).expect_err("must be refused");
        let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{err}");
        assert!(
            problems[0].starts_with("rule \"a\" (#1) algorithm: "),
            "{err}"
        );
        assert!(
            problems[1]
                .starts_with("rule \"a\" (#3) name: duplicate rule name: rule #1 has it too"),
            "{err}"
        );
        assert!(problems[2].starts_with("rule \"a\" (#3) limit: "), "{err}");
    }

    #[test]
    fn a_non_loopback_admin_listen_env_still_needs_a_token() {
        let err =
            admin_listen_with("[server]\n", Some("0.0.0.0:9191")).expect_err("must be refused");
        assert!(err.to_string().contains("admin.token"), "{err}");
    }

    fn store_problems(store: &str, env_url: Option<&str>) -> Vec<String> {
        let overrides = Overrides {
            redis_url: env_url.map(str::to_owned),
            ..Overrides::default()
        };
        match parse(&format!("[store]\n{store}"), None, &overrides) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn store_of(store: &str, env_url: Option<&str>) -> StoreSettings {
        let overrides = Overrides {
            redis_url: env_url.map(str::to_owned),
            ..Overrides::default()
        };
        match parse(&format!("[store]\n{store}"), None, &overrides) {
            Ok(s) => s.store,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn urls_name_a_cluster_and_sentinels_a_sentinel_primary() {
        let one = store_of("backend = \"redis\"\nurl = \"redis://h:6379/0\"\n", None);
        assert_eq!(one.redis_layout, RedisLayout::Standalone);
        let cluster = store_of(
            "backend = \"redis\"\nurls = [\"redis://a:7000\", \"redis://b:7000\"]\n",
            None,
        );
        assert_eq!(cluster.redis_layout, RedisLayout::Cluster);
        assert_eq!(
            cluster.backend,
            Backend::Redis {
                urls: vec!["redis://a:7000".into(), "redis://b:7000".into()]
            }
        );
        let sentinel = store_of(
            "backend = \"redis\"\nsentinels = [\"redis://s1:26379\"]\nsentinel_master = \"mymaster\"\n",
            Some("redis://floodgate:secret@mymaster/2"),
        );
        assert_eq!(
            sentinel.redis_layout,
            RedisLayout::Sentinel {
                master: "mymaster".into(),
                primary_url: Some("redis://floodgate:secret@mymaster/2".into()),
            }
        );
        assert_eq!(
            sentinel.backend,
            Backend::Redis {
                urls: vec!["redis://s1:26379".into()]
            }
        );
        // FLOODGATE_REDIS_URL replaces a cluster's seeds.
        let cluster = store_of("urls = [\"redis://a:7000\"]\n", Some("redis://:pw@c:7000"));
        assert_eq!(cluster.redis_layout, RedisLayout::Cluster);
        assert_eq!(
            cluster.backend,
            Backend::Redis {
                urls: vec!["redis://:pw@c:7000".into()]
            }
        );
    }

    #[test]
    fn redis_topology_mistakes_are_each_named_with_their_field() {
        let problems = store_problems(
            "backend = \"redis\"\nurl = \"redis://x:1\"\nurls = [\"redis://y:1\"]\n",
            None,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.url: give url"),
            "{problems:?}"
        );

        let problems = store_problems(
            "backend = \"redis\"\nsentinels = []\nurls = [\"redis://y:1\"]\nurl = \"redis://user:pw@primary/0\"\n",
            None,
        );
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            ["store.urls", "store.sentinels", "store.sentinel_master"],
            "{problems:?}"
        );

        let problems = store_problems(
            "backend = \"redis\"\nsentinels = [\"http://s1:26379\"]\nsentinel_master = \"m\"\nurl = \"redis://u:secret@primary/0\"\n",
            None,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("store.sentinels: "), "{problems:?}");
        assert!(
            problems[1].starts_with("store.url: with sentinels"),
            "{problems:?}"
        );
        assert!(
            !problems.concat().contains("secret"),
            "a password in a message: {problems:?}"
        );

        let problems = store_problems("backend = \"redis\"\nurls = []\n", None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.urls: an empty list"),
            "{problems:?}"
        );
    }

    #[test]
    fn tls_files_are_read_and_named_when_wrong() {
        let problems = store_problems(
            "backend = \"redis\"\nurl = \"rediss://h:6380/0\"\ntls_ca_file = \"/nonexistent/ca.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
            None,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.tls_ca_file: /nonexistent/ca.pem cannot be read"),
            "{problems:?}"
        );

        let dir = std::env::temp_dir().join(format!("floodgate-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let problems = store_problems(
            &format!(
                "backend = \"redis\"\nurl = \"redis://h:6379/0\"\ntls_ca_file = {:?}\n",
                junk.display().to_string()
            ),
            None,
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("store.tls_ca_file: set, but no Redis URL uses rediss://"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("store.tls_ca_file: TLS CA certificate"),
            "{problems:?}"
        );
    }

    fn server_of(server: &str) -> Result<ServerSettings, Vec<String>> {
        parse(&format!("[server]\n{server}"), None, &Overrides::default())
            .map(|s| s.server)
            .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn max_header_bytes_takes_bytes_or_a_unit_within_bounds() {
        let bytes = |text: &str| server_of(text).map(|s| s.max_header_bytes);
        assert_eq!(bytes(""), Ok(DEFAULT_MAX_HEADER_BYTES));
        assert_eq!(bytes("max_header_bytes = 65536"), Ok(65_536));
        assert_eq!(bytes("max_header_bytes = \"16KiB\""), Ok(16_384));
        assert_eq!(bytes("max_header_bytes = \"1MiB\""), Ok(1 << 20));
        assert_eq!(bytes("max_header_bytes = \"9000\""), Ok(9_000));
        for (value, message) in [
            (
                "0",
                "must be between 8192 (8KiB) and 16777216 (16MiB), got 0",
            ),
            ("4096", "got 4096"),
            ("\"32MiB\"", "got 33554432"),
            (
                "-1",
                "must be a number of bytes, like 65536 or \"64KiB\", got -1",
            ),
            ("\"64 kb\"", "must be a number of bytes"),
            ("\"lots\"", "got \"lots\""),
            ("1.5", "must be a number of bytes"),
            ("\"99999999999999999999KiB\"", "must be a number of bytes"),
        ] {
            assert_one_server_problem("max_header_bytes", value, message);
        }
    }

    /// `[server] <field> = <value>` is refused with one problem, at the
    /// field, saying `message`.
    fn assert_one_server_problem(field: &str, value: &str, message: &str) {
        let problems = server_of(&format!("{field} = {value}")).expect_err(value);
        assert_eq!(problems.len(), 1, "{value}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!("server.{field}: ")) && problems[0].contains(message),
            "{value}: {problems:?}"
        );
    }

    #[test]
    fn max_connections_is_a_positive_whole_number_or_left_to_the_fd_limit() {
        let cap = |text: &str| server_of(text).map(|s| s.max_connections.map(NonZeroU32::get));
        assert_eq!(cap(""), Ok(None));
        assert_eq!(cap("max_connections = 1"), Ok(Some(1)));
        assert_eq!(cap("max_connections = 20000"), Ok(Some(20_000)));
        for (value, message) in [
            ("0", "must be between 1 and 4294967295, got 0"),
            ("-3", "got -3"),
            ("4294967296", "got 4294967296"),
            (
                "\"many\"",
                "must be a whole number of connections, like 10000",
            ),
            ("\"100\"", "got \"100\""),
            ("2.0", "must be a whole number"),
        ] {
            assert_one_server_problem("max_connections", value, message);
        }
    }

    #[test]
    fn an_unknown_field_with_an_odd_name_is_named_quoted() {
        for (text, at) in [
            ("\"\" = 1", "\"\""),
            ("[server]\n\"\" = 1", "server \"\""),
            ("\"x\\n\" = 1", "\"x\\n\""),
            ("[server]\nlisten_on = 1", "server listen_on"),
        ] {
            let err = parse(text, None, &Overrides::default()).expect_err("an unknown field");
            assert_eq!(err.problems[0].at, at, "{text:?}");
        }
    }
}

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
