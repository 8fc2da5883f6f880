//! The config parser: `floodgate_server::config::parse`, what
//! `floodgate check-config` and `serve --config` run on a file's text.
//!
//! Inputs are TOML documents built from the config's own grammar (every
//! section and field, values at and across their bounds, wrong types,
//! unknown fields, duplicate rules), or the shipped configs, then often
//! mutated byte by byte. Invariants:
//! - no panic, for any text and any environment overrides;
//! - an error lists at least one problem, each with a non-empty message and
//!   a place that names a field (`server.listen`, `rule "api" limit`, an
//!   unknown field's own name) or a line and column inside the text;
//! - an accepted config is one the rest of the server accepts too: the
//!   limiter validates it, `check-config`'s summary prints it, and its values
//!   are within their documented bounds.

use std::path::Path;

use floodgate_core::MAX_WINDOW;
use floodgate_server::config::{self, Backend, ConfigError, Overrides, Settings};

use crate::harness::{FuzzTarget, clip};
use crate::mutate::{hex, mutate};
use crate::rng::Rng;

/// The configs shipped with floodgate, as seeds.
const SEEDS: &[&str] = &[
    include_str!("../../../../deploy/floodgate.toml"),
    // README.md's example.
    r#"[server]
listen = "0.0.0.0:8080"
upstream = "http://127.0.0.1:3000"
trusted_proxies = ["127.0.0.1/32"]

[store]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
on_error = "local"

[admin]
listen = "127.0.0.1:9090"
token = "3f9c1d2e8a7b6c5d4e3f2a1b0c9d8e7f"

[[rule]]
name = "api-per-client"
match = { path_prefix = "/api/" }
key = "header:x-api-key"
algorithm = "token_bucket"
limit = 100
window = "1m"
burst = 20
block_for = "15m"
"#,
    // SPEC.md's example, every field, with token_bucket: `burst` is
    // refused for the sliding_window the example names.
    r#"[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
reuse_port = false
trusted_proxies = ["127.0.0.1/32", "::1/128"]
ipv6_prefix = 64

[store]
backend = "memory"
url = "redis://127.0.0.1:6379/0"
prefix = "floodgate"
timeout = "50ms"
on_error = "allow"
max_keys = 1000000

[admin]
listen = "127.0.0.1:9090"
token = "5b1e0c9d8a7f6e5d4c3b2a1f0e9d8c7b"

[access]
allow = ["ip:10.0.0.0/8"]
deny  = ["ip:203.0.113.0/24", "header:x-api-key:leaked"]

[[rule]]
name = "api-per-client"
match = { path_prefix = "/api/", methods = ["GET", "POST"] }
key = "ip"
algorithm = "token_bucket"
limit = 100
window = "1m"
burst = 20
cost = 1
block_for = "15m"
shadow = false
"#,
];

/// Keywords and delimiters of the format, inserted by the mutator.
const DICTIONARY: &[&[u8]] = &[
    b"[server]\n",
    b"[store]\n",
    b"[admin]\n",
    b"[access]\n",
    b"[[rule]]\n",
    b"[rule]\n",
    b"name = \"r\"\n",
    b"limit = ",
    b"window = \"1m\"\n",
    b"burst = ",
    b"cost = ",
    b"block_for = ",
    b"count_status = [401, \"5xx\"]\n",
    b"cost_header = \"x-cost\"\n",
    b"on_limit = \"delay\"\n",
    b"max_delay = \"1s\"\n",
    b"[[rule.override]]\nkey = \"k\"\nlimit = 5\n",
    b"key = ",
    b"algorithm = \"token_bucket\"\n",
    b"match = { path_prefix = \"/\" }\n",
    b"methods = [\"GET\"]",
    b"backend = \"redis\"\n",
    b"urls = []\n",
    b"\"\"\"",
    b"'''",
    b"= ",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b".",
    b"\n",
    b"#",
    b"\\u0000",
    b"\\U0010FFFF",
    b"ip:",
    b"header:",
    b"1979-05-27T07:32:00Z",
    b"inf",
    b"nan",
    b"0x10",
    b"true",
];

/// One generated config.
#[derive(Debug, Clone)]
pub struct ConfigInput {
    /// The file's bytes; parsed as UTF-8 with invalid sequences replaced,
    /// as `check-config` refuses a file that is not UTF-8 before parsing.
    pub text: Vec<u8>,
    /// The environment and command-line overrides.
    pub overrides: Overrides,
    /// Whether the text comes with a file name (errors then name it).
    pub named: bool,
}

/// The config-parser target.
#[derive(Debug, Default)]
pub struct ConfigTarget;

impl FuzzTarget for ConfigTarget {
    type Input = ConfigInput;

    fn name(&self) -> &'static str {
        "config"
    }

    fn generate(&mut self, rng: &mut Rng) -> ConfigInput {
        let mut text = if rng.percent(20) {
            rng.pick(SEEDS).as_bytes().to_vec()
        } else {
            document(rng).into_bytes()
        };
        if rng.percent(55) {
            mutate(rng, &mut text, DICTIONARY, 6, 64 * 1024);
        }
        ConfigInput {
            text,
            overrides: overrides(rng),
            named: rng.percent(50),
        }
    }

    fn check(&mut self, input: &ConfigInput) {
        let text = String::from_utf8_lossy(&input.text);
        let file = input.named.then_some(Path::new("fuzz.toml"));
        match config::parse(&text, file, &input.overrides) {
            Ok(settings) => check_accepted(&settings),
            Err(error) => check_refused(&error, &text),
        }
    }

    fn describe(&self, input: &ConfigInput) -> String {
        format!(
            "text hex {} (as text: {:?}), overrides {:?}, named {}",
            hex(&input.text),
            clip(&String::from_utf8_lossy(&input.text), 2000),
            input.overrides,
            input.named
        )
    }
}

/// An accepted config must be one the server runs with.
fn check_accepted(s: &Settings) {
    let limiter = s.limiter_config();
    if let Err(e) = limiter.validate() {
        panic!("check-config accepted a config the limiter refuses: {e}");
    }
    let summary = config::summary(s);
    assert!(summary.contains(": OK\n"), "summary without OK: {summary}");
    assert!(
        (1..=128).contains(&s.server.ipv6_prefix),
        "ipv6_prefix {} accepted",
        s.server.ipv6_prefix
    );
    assert!(!s.server.drain_timeout.is_zero() && !s.store.timeout.is_zero());
    assert!(s.store.max_keys >= 1);
    assert!(
        !s.store.prefix.is_empty() && !s.store.prefix.contains(['{', '}']),
        "prefix {:?} accepted",
        s.store.prefix
    );
    if let Backend::Redis { urls } = &s.store.backend {
        assert!(!urls.is_empty(), "redis backend without a URL accepted");
        for url in urls {
            assert!(
                url.starts_with("redis://") || url.starts_with("rediss://"),
                "redis URL {url:?} accepted"
            );
        }
    }
    if let Some(upstream) = &s.server.upstream {
        assert_eq!(upstream.scheme_str(), Some("http"), "upstream {upstream}");
    }
    if let Some(addr) = s.admin.listen
        && !addr.ip().is_loopback()
    {
        assert!(
            s.admin.token.as_deref().is_some_and(|t| !t.is_empty()),
            "admin on {addr} without a token accepted"
        );
    }
    for r in &s.rules {
        let p = &r.policy;
        assert!(
            (1..=64).contains(&r.name.len()),
            "rule name {:?} accepted",
            r.name
        );
        assert!(
            r.cost >= 1 && r.cost <= p.capacity(),
            "rule {:?}: cost {} over capacity {}",
            r.name,
            r.cost,
            p.capacity()
        );
        assert!(p.window() <= MAX_WINDOW && !p.window().is_zero());
        if let Some(prefix) = &r.matcher.path_prefix {
            assert!(prefix.starts_with('/'), "path_prefix {prefix:?} accepted");
        }
    }
}

/// A refused config must say what is wrong, and where: every problem names
/// its place, non-empty and without edge whitespace (an unknown field named
/// `""` or `"x\n"` once left it empty or split, fixed in 15cff8c).
fn check_refused(e: &ConfigError, text: &str) {
    assert!(!e.problems.is_empty(), "an error without problems");
    let lines = text.split('\n').count();
    for p in &e.problems {
        assert!(
            !p.message.trim().is_empty(),
            "a problem without a message at {:?}",
            p.at
        );
        assert!(
            !p.at.trim().is_empty() && p.at.trim() == p.at,
            "a problem that names no place: {:?} at {:?}",
            p.message,
            p.at
        );
        if let Some(rest) = p.at.strip_prefix("line ") {
            let line: usize = rest
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unreadable position {:?}", p.at));
            assert!(
                (1..=lines).contains(&line),
                "line {line} of a {lines}-line text"
            );
        }
    }
    // What `check-config` prints must render.
    let shown = e.to_string();
    assert!(shown.lines().count() > e.problems.len());
}

fn overrides(rng: &mut Rng) -> Overrides {
    let mut o = Overrides::default();
    if rng.percent(85) {
        return o;
    }
    if rng.percent(30) {
        o.listen = Some(if rng.percent(50) {
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())
        } else {
            "[::1]:8080".parse().unwrap_or_else(|_| unreachable!())
        });
    }
    if rng.percent(40) {
        o.redis_url = Some(if rng.percent(60) {
            "redis://127.0.0.1:6379/0".to_owned()
        } else {
            let n = rng.len(40);
            rng.string(n)
        });
    }
    if rng.percent(40) {
        let n = rng.len(40);
        o.admin_token = Some(rng.string(n));
    }
    if rng.percent(40) {
        o.admin_listen = Some(
            if rng.percent(70) {
                rng.pick(ADDRS.ok)
            } else {
                rng.pick(ADDRS.bad)
            }
            .to_string(),
        );
    }
    o
}

// ---------------------------------------------------------------------------
// The grammar: a TOML document of the config's sections and fields.

/// Values of one field: those the field accepts, and those it must refuse.
struct Pool {
    ok: &'static [&'static str],
    bad: &'static [&'static str],
}

const ADDRS: Pool = Pool {
    ok: &[
        "127.0.0.1:8080",
        "[::1]:9090",
        "0.0.0.0:0",
        "0.0.0.0:9090",
        "[::]:80",
    ],
    bad: &[
        "localhost:80",
        "",
        "1.2.3.4",
        "256.0.0.1:1",
        "[::1]:65536",
        "127.0.0.1:-1",
        "[fe80::1%eth0]:80",
    ],
};
const UPSTREAMS: Pool = Pool {
    ok: &[
        "http://127.0.0.1:3000",
        "http://[::1]:8080/base",
        "http://user@host:1/?q#f",
    ],
    bad: &[
        "https://example.test",
        "http://",
        "http:///path",
        "ftp://host",
        "http://host:99999",
        "not a url",
        "",
        "/relative",
    ],
};
const NETS: Pool = Pool {
    ok: &[
        "127.0.0.1/32",
        "::1/128",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "::/0",
        "10.1.2.3/8",
        "192.0.2.7",
        "2001:db8::1",
        "::ffff:10.0.0.0/104",
    ],
    bad: &["1.2.3.4/33", "::/129", "garbage", "", "10.0.0.0/"],
};
const PREFIXES: Pool = Pool {
    ok: &["1", "48", "64", "128"],
    bad: &["0", "129", "255", "256", "-1", "\"64\""],
};
const STATUSES: Pool = Pool {
    ok: &["401", "403", "429", "4xx", "5xx", "5XX", "200"],
    bad: &["600", "99", "4x", "x", "", "4xxx", "-1"],
};

const HEADER_NAMES: Pool = Pool {
    ok: &["x-ratelimit-cost", "x-cost", "X-Tokens-Used"],
    bad: &["", "bad header", "x:cost", "é"],
};

const KEYS_OF_OVERRIDES: Pool = Pool {
    ok: &["ip:192.0.2.1", "header:x-api-key:partner", "global"],
    bad: &[""],
};

const ON_LIMIT: Pool = Pool {
    ok: &["reject", "delay"],
    bad: &["hold", "", "DELAY"],
};

const DURATIONS: Pool = Pool {
    ok: &[
        "1ms",
        "250ms",
        "10s",
        "1m",
        "1h",
        "1d",
        "366d",
        "31622400s",
        " 5s ",
    ],
    bad: &[
        "367d",
        "0ms",
        "0s",
        "31622400001ms",
        "18446744073709551615ms",
        "18446744073709551616ms",
        "18446744073709551615d",
        "1.5s",
        "-1s",
        "5S",
        "s",
        "10",
        "",
        "1m1s",
        "１s",
    ],
};
const BACKENDS: Pool = Pool {
    ok: &["memory", "redis"],
    bad: &["etcd", "", "Memory"],
};
const URLS: Pool = Pool {
    ok: &["redis://127.0.0.1:6379/0", "rediss://u:p@h:1/2"],
    bad: &["http://x", "", "redis:/x"],
};
const STORE_PREFIXES: Pool = Pool {
    ok: &["floodgate", "p:q", "é"],
    bad: &["", "a{b", "a}", "has space"],
};
const ON_ERROR: Pool = Pool {
    ok: &["allow", "deny", "local"],
    bad: &["Allow", "", "fail"],
};
const TOKENS: Pool = Pool {
    ok: &["3f9c1d2e8a7b6c5d", " "],
    bad: &["", "change-me", "..."],
};
const TARGETS: Pool = Pool {
    ok: &[
        "ip:10.0.0.0/8",
        "ip:203.0.113.7",
        "ip:2001:db8::/32",
        "ip:::ffff:192.0.2.1",
        "header:x-api-key:leaked",
        "header:X-Api-Key:a:b:c",
    ],
    bad: &[
        "ip:10.1.2.3/8",
        "ip:",
        "ip: 1.2.3.4",
        "header::v",
        "header:bad name:v",
        "header:x:",
        "203.0.113.7",
        "",
    ],
};
const KEY_PARTS: Pool = Pool {
    ok: &[
        "ip",
        "path",
        "method",
        "global",
        "header:x-api-key",
        "header:X-Forwarded-For",
    ],
    bad: &[
        "header:",
        "header:bad name",
        "header:\u{e9}",
        "IP",
        "user",
        "",
    ],
};
const ALGORITHMS: Pool = Pool {
    ok: &[
        "fixed_window",
        "sliding_window",
        "sliding_log",
        "token_bucket",
    ],
    bad: &["leaky_bucket", "TokenBucket", ""],
};
const INTEGERS: Pool = Pool {
    ok: &[
        "1",
        "2",
        "5",
        "20",
        "100",
        "100000",
        "100001",
        "1000000000000",
        "1_000",
        "0x10",
        "+3",
    ],
    bad: &[
        "0",
        "1000000000001",
        "9223372036854775807",
        "-1",
        "-9223372036854775808",
        "1.5",
        "1e3",
        "\"10\"",
        "inf",
        "true",
    ],
};
const RULE_NAMES: Pool = Pool {
    ok: &[
        "api",
        "api-per-client",
        "a.b_c-d",
        "012345678901234567890123456789012345678901234567890123456789",
    ],
    bad: &[
        "",
        "has space",
        "a/b",
        "é",
        "01234567890123456789012345678901234567890123456789012345678901234",
    ],
};
const PATH_PREFIXES: Pool = Pool {
    ok: &["/api/", "/", "/é"],
    bad: &["api/", ""],
};
const METHODS: Pool = Pool {
    ok: &["GET", "post", "DELETE", "PATCH"],
    bad: &["", "BAD METHOD", "é"],
};
const WRONG_TYPES: &[&str] = &[
    "1",
    "-7",
    "3.5",
    "true",
    "\"text\"",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ x = 1 }",
    "1979-05-27",
    "'''multi\nline'''",
];

/// Writes `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a document. `noise` is the percentage of values chosen to be
/// wrong: low, most documents are accepted and validation runs to the end;
/// high, every check gets its refusal tested.
struct Doc<'a> {
    rng: &'a mut Rng,
    noise: u64,
    out: String,
    rules: usize,
}

impl Doc<'_> {
    fn noisy(&mut self) -> bool {
        self.rng.percent(self.noise)
    }

    /// One of the pool's texts, unquoted; sometimes random text when noisy.
    fn raw(&mut self, pool: &Pool) -> String {
        if !self.noisy() {
            return self.rng.pick(pool.ok).to_string();
        }
        if self.rng.one_in(4) {
            let n = self.rng.len(60);
            return self.rng.string(n);
        }
        self.rng.pick(pool.bad).to_string()
    }

    fn wrong_type(&mut self) -> String {
        self.rng.pick(WRONG_TYPES).to_string()
    }

    /// A string field's value.
    fn string(&mut self, pool: &Pool) -> String {
        if self.noisy() && self.rng.one_in(5) {
            return self.wrong_type();
        }
        let text = self.raw(pool);
        toml_string(&text)
    }

    /// A bare value (a number).
    fn bare(&mut self, pool: &Pool) -> String {
        if !self.noisy() {
            return self.rng.pick(pool.ok).to_string();
        }
        if self.rng.one_in(5) {
            return self.wrong_type();
        }
        self.rng.pick(pool.bad).to_string()
    }

    fn list(&mut self, pool: &Pool) -> String {
        if self.noisy() && self.rng.one_in(5) {
            return self.wrong_type();
        }
        let n = self.rng.len(6);
        let items: Vec<String> = (0..n).map(|_| self.string(pool)).collect();
        format!("[{}]", items.join(", "))
    }

    fn boolean(&mut self) -> String {
        if self.noisy() && self.rng.one_in(3) {
            return self.wrong_type();
        }
        self.rng.pick(&["true", "false"]).to_string()
    }

    fn field(&mut self, name: &str, value: String) {
        self.out.push_str(&format!("{name} = {value}\n"));
    }

    /// A field written with probability `percent`.
    fn maybe(&mut self, percent: u64, name: &str, value: impl FnOnce(&mut Self) -> String) {
        if self.rng.percent(percent) {
            let v = value(self);
            self.field(name, v);
        }
    }

    fn unknown_field(&mut self) {
        if self.noisy() && self.rng.one_in(4) {
            let name = if self.rng.percent(50) {
                "unknown_field".to_owned()
            } else {
                let n = self.rng.len(12);
                toml_string(&self.rng.string(n))
            };
            let v = self.wrong_type();
            self.field(&name, v);
        }
    }

    fn server(&mut self) {
        self.out.push_str("[server]\n");
        self.maybe(60, "listen", |d| d.string(&ADDRS));
        self.maybe(40, "upstream", |d| d.string(&UPSTREAMS));
        self.maybe(30, "reuse_port", Self::boolean);
        self.maybe(50, "trusted_proxies", |d| d.list(&NETS));
        self.maybe(40, "ipv6_prefix", |d| d.bare(&PREFIXES));
        self.maybe(30, "drain_timeout", |d| d.string(&DURATIONS));
        self.maybe(30, "upstream_timeout", |d| d.string(&DURATIONS));
        self.unknown_field();
    }

    fn store(&mut self) {
        self.out.push_str("[store]\n");
        let redis = self.rng.percent(40);
        if redis {
            self.field("backend", toml_string("redis"));
        } else {
            self.maybe(30, "backend", |d| d.string(&BACKENDS));
        }
        if redis || self.rng.percent(20) {
            if self.rng.percent(70) {
                let url = self.string(&URLS);
                self.field("url", url);
            } else {
                let urls = self.list(&URLS);
                self.field("urls", urls);
            }
        }
        self.maybe(30, "prefix", |d| d.string(&STORE_PREFIXES));
        self.maybe(40, "timeout", |d| d.string(&DURATIONS));
        self.maybe(40, "on_error", |d| d.string(&ON_ERROR));
        self.maybe(30, "max_keys", |d| d.bare(&INTEGERS));
        self.unknown_field();
    }

    fn admin(&mut self) {
        self.out.push_str("[admin]\n");
        self.maybe(60, "listen", |d| d.string(&ADDRS));
        self.maybe(50, "token", |d| d.string(&TOKENS));
        self.unknown_field();
    }

    fn access(&mut self) {
        self.out.push_str("[access]\n");
        self.maybe(60, "allow", |d| d.list(&TARGETS));
        self.maybe(60, "deny", |d| d.list(&TARGETS));
        self.unknown_field();
    }

    fn key(&mut self) -> String {
        if self.rng.percent(60) || self.noisy() {
            return if self.rng.percent(60) {
                self.string(&KEY_PARTS)
            } else {
                self.list(&KEY_PARTS)
            };
        }
        // Distinct parts: a list naming one twice is refused.
        let mut parts: Vec<&str> = KEY_PARTS.ok.to_vec();
        for i in (1..parts.len()).rev() {
            let j = self.rng.index(i + 1);
            parts.swap(i, j);
        }
        let n = self.rng.range(1, parts.len() as u64) as usize;
        let items: Vec<String> = parts[..n].iter().map(|p| toml_string(p)).collect();
        format!("[{}]", items.join(", "))
    }

    fn rule(&mut self) {
        self.out.push_str("[[rule]]\n");
        self.rules += 1;
        if self.noisy() {
            if !self.rng.one_in(4) {
                let name = self.string(&RULE_NAMES);
                self.field("name", name);
            }
        } else {
            // Unique, and within 64 characters.
            let base = self.rng.pick(RULE_NAMES.ok);
            let name = format!("{}-{}", &base[..base.len().min(56)], self.rules);
            self.field("name", toml_string(&name));
        }
        self.maybe(40, "match", Self::matcher);
        self.maybe(60, "key", Self::key);
        let algorithm = self.raw(&ALGORITHMS);
        if self.rng.percent(80) {
            self.field("algorithm", toml_string(&algorithm));
        }
        if !(self.noisy() && self.rng.one_in(3)) {
            let limit = self.bare(&INTEGERS);
            self.field("limit", limit);
        }
        if !(self.noisy() && self.rng.one_in(3)) {
            let window = self.string(&DURATIONS);
            self.field("window", window);
        }
        if algorithm == "token_bucket" || self.noisy() {
            self.maybe(50, "burst", |d| d.bare(&INTEGERS));
        }
        if self.rng.percent(40) {
            // Usually a cost every limit admits.
            let cost = if self.noisy() {
                self.bare(&INTEGERS)
            } else {
                "1".to_owned()
            };
            self.field("cost", cost);
        }
        if self.noisy() && self.rng.percent(50) {
            // A ladder, in any order.
            self.maybe(30, "block_for", |d| d.list(&DURATIONS));
        } else if self.rng.percent(20) {
            self.field("block_for", "[\"1m\", \"10m\", \"1h\"]".to_owned());
        } else {
            self.maybe(30, "block_for", |d| d.string(&DURATIONS));
        }
        let shadow = self.rng.percent(20);
        if shadow {
            let value = self.boolean();
            self.field("shadow", value);
        }
        self.maybe(15, "count_status", Self::statuses);
        self.maybe(10, "cost_header", |d| d.string(&HEADER_NAMES));
        if (self.noisy() || (algorithm == "token_bucket" && !shadow)) && self.rng.percent(15) {
            let on_limit = self.string(&ON_LIMIT);
            let delaying = on_limit.contains("delay");
            self.field("on_limit", on_limit);
            if delaying || self.noisy() {
                self.maybe(60, "max_delay", |d| d.string(&DURATIONS));
            }
        }
        self.unknown_field();
        for _ in 0..self.rng.len(3) {
            if !self.rng.percent(30) {
                break;
            }
            self.out.push_str("[[rule.override]]\n");
            self.maybe(90, "key", |d| d.string(&KEYS_OF_OVERRIDES));
            if self.noisy() {
                self.maybe(90, "limit", |d| d.bare(&INTEGERS));
                self.maybe(30, "window", |d| d.string(&DURATIONS));
                self.maybe(20, "burst", |d| d.bare(&INTEGERS));
            } else {
                self.field("limit", "1000".to_owned());
            }
            self.unknown_field();
        }
    }

    /// `count_status`: codes as numbers, classes as strings, sometimes
    /// the wrong way round.
    fn statuses(&mut self) -> String {
        if self.noisy() && self.rng.one_in(5) {
            return self.wrong_type();
        }
        let n = self.rng.len(4);
        let items: Vec<String> = (0..n)
            .map(|_| {
                let item = self.raw(&STATUSES);
                match item.parse::<i64>() {
                    Ok(code) if !self.rng.one_in(4) => code.to_string(),
                    _ => toml_string(&item),
                }
            })
            .collect();
        format!("[{}]", items.join(", "))
    }

    fn matcher(&mut self) -> String {
        if self.noisy() && self.rng.one_in(5) {
            return self.wrong_type();
        }
        let mut parts = Vec::new();
        if self.rng.percent(70) {
            parts.push(format!("path_prefix = {}", self.string(&PATH_PREFIXES)));
        }
        if self.rng.percent(50) {
            parts.push(format!("methods = {}", self.list(&METHODS)));
        }
        if self.noisy() && self.rng.one_in(4) {
            parts.push("other = 1".to_owned());
        }
        format!("{{ {} }}", parts.join(", "))
    }
}

/// A whole config document from the grammar.
fn document(rng: &mut Rng) -> String {
    let noise = *rng.pick(&[0, 0, 2, 5, 10, 30, 60]);
    let mut d = Doc {
        rng,
        noise,
        out: String::new(),
        rules: 0,
    };
    if d.rng.percent(70) {
        d.server();
    }
    if d.rng.percent(60) {
        d.store();
    }
    if d.rng.percent(50) {
        d.admin();
    }
    if d.rng.percent(40) {
        d.access();
    }
    for _ in 0..d.rng.len(5) {
        d.rule();
    }
    if d.noisy() && d.rng.one_in(5) {
        // Top-level keys go before the first table.
        let n = d.rng.len(8);
        let name = toml_string(&d.rng.string(n));
        d.out = format!("{name} = 1\n{}[unknown_section]\nx = 1\n", d.out);
    }
    d.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_valid_configs() {
        for seed in SEEDS {
            if let Err(e) = config::parse(seed, None, &Overrides::default()) {
                panic!("{e}\n{seed}");
            }
        }
    }

    #[test]
    fn the_grammar_reaches_accepted_configs_and_every_kind_of_problem() {
        let mut rng = Rng::new(1);
        let mut accepted = 0;
        let mut places: Vec<String> = Vec::new();
        for _ in 0..4_000 {
            match config::parse(&document(&mut rng), None, &Overrides::default()) {
                Ok(_) => accepted += 1,
                Err(e) => places.extend(e.problems.into_iter().map(|p| p.at)),
            }
        }
        assert!(accepted > 800, "only {accepted} of 4000 accepted");
        for field in [
            "server.listen",
            "server.upstream",
            "server.trusted_proxies",
            "server.ipv6_prefix",
            "server.drain_timeout",
            "server.upstream_timeout",
            "store.backend",
            "store.url",
            "store.prefix",
            "store.timeout",
            "store.on_error",
            "store.max_keys",
            "admin.token",
            "access.allow",
            "access.deny",
            " name",
            " key",
            " algorithm",
            " limit",
            " window",
            " burst",
            " cost",
            " block_for",
            " match.path_prefix",
            " match.methods",
            "unknown_field",
            "line ",
        ] {
            assert!(
                places.iter().any(|p| p.contains(field)),
                "no generated config was refused for {field:?}"
            );
        }
    }
}
