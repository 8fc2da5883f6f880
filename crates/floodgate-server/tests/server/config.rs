//! Bad configuration, through the real binary: `check-config` exits 1 and
//! lists every problem with the rule and field it concerns; `serve` refuses
//! the same file with the same words; nothing panics.

use crate::support::process::{check_config, serve_expecting_exit};

const GOOD: &str = r#"
[server]
listen = "{listen}"
trusted_proxies = ["127.0.0.1/32", "::1/128"]

[store]
backend = "memory"
max_keys = 1000

[admin]
listen = "{admin}"

[access]
allow = ["ip:10.0.0.0/8", "ip:2001:db8::/32"]
deny = ["ip:203.0.113.0/24", "header:x-api-key:leaked"]

[[rule]]
name = "api-per-client"
match = { path_prefix = "/api/", methods = ["GET", "POST"] }
key = "ip"
algorithm = "sliding_window"
limit = 100
window = "1m"

[[rule]]
name = "per-key"
key = ["header:x-api-key", "path"]
algorithm = "token_bucket"
limit = 10
window = "10s"
burst = 20
block_for = "15m"
consistency = "exact"
"#;

/// `GOOD` with one line replaced.
fn good_but(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} is not in the good config");
    GOOD.replacen(from, to, 1)
}

/// Asserts that both `check-config` and `serve` refuse `config`, that every
/// string of `expected` appears among the problems of both, and that
/// nothing panicked.
fn assert_refused(config: &str, expected: &[&str]) {
    let (code, stdout, check_stderr) = check_config(config);
    assert_eq!(code, 1, "check-config accepted:\n{config}\n{stdout}");
    let (code, serve_stderr) = serve_expecting_exit(config);
    assert_ne!(code, 0, "serve accepted:\n{config}");
    for (command, stderr) in [("check-config", check_stderr), ("serve", serve_stderr)] {
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
        for problem in expected {
            assert!(
                stderr.contains(problem),
                "{command} does not mention {problem:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn a_batched_rule_passes_and_its_summary_says_so() {
    let config = good_but("consistency = \"exact\"", "consistency = \"batched\"");
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("consistency batched: each instance leases up to 1 of a key's units"),
        "{stdout}"
    );
}

#[test]
fn the_good_config_passes_with_a_summary() {
    let (code, stdout, stderr) = check_config(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": OK"), "{stdout}");
    for expected in [
        "api-per-client",
        "sliding_window 100 per 1m key ip",
        "per-key",
        "token_bucket 10 per 10s",
        "burst 20",
        "block_for 15m",
        "2 allow, 2 deny",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

#[test]
fn each_kind_of_mistake_is_refused_with_its_rule_and_field() {
    let cases: [(String, &[&str]); 29] = [
        (
            good_but(
                "algorithm = \"sliding_window\"",
                "algorithm = \"leaky_bucket\"",
            ),
            &["rule \"api-per-client\" algorithm", "leaky_bucket"],
        ),
        (
            good_but("limit = 100", "limit = 0"),
            &["rule \"api-per-client\" limit", "at least 1"],
        ),
        (
            good_but("window = \"1m\"", "window = \"1 minute\""),
            &["rule \"api-per-client\" window", "\"1 minute\""],
        ),
        (
            good_but("block_for = \"15m\"", "block_for = \"15x\""),
            &["rule \"per-key\" block_for", "\"15x\""],
        ),
        (
            good_but(
                "block_for = \"15m\"",
                "block_for = [\"1m\", \"1h\", \"15x\"]",
            ),
            &["rule \"per-key\" block_for[2]", "\"15x\""],
        ),
        (
            good_but("block_for = \"15m\"", "block_for = [\"1h\", \"10m\"]"),
            &[
                "rule \"per-key\" block_for",
                "step 2 (10m) is shorter than the step before it (1h)",
            ],
        ),
        (
            good_but(
                "burst = 20",
                "burst = 20\n[[rule.override]]\nkey = \"ip:192.0.2.1\"\nlimit = 0",
            ),
            &["rule \"per-key\" override #1 limit", "at least 1, got 0"],
        ),
        (
            good_but("burst = 20", "burst = 20\n[[rule.override]]\nlimit = 5"),
            &["rule \"per-key\" override #1 key", "missing"],
        ),
        (
            good_but(
                "algorithm = \"sliding_window\"",
                "algorithm = \"fixed_window\"\non_limit = \"delay\"",
            ),
            &[
                "rule \"api-per-client\" on_limit",
                "\"delay\" needs algorithm = \"token_bucket\", not fixed_window",
            ],
        ),
        (
            good_but("window = \"1m\"", "window = \"1m\"\nmax_delay = \"1s\""),
            &[
                "rule \"api-per-client\" max_delay",
                "only applies with on_limit = \"delay\"",
            ],
        ),
        (
            good_but("window = \"1m\"", "window = \"1m\"\non_limit = \"hold\""),
            &[
                "rule \"api-per-client\" on_limit",
                "\"hold\" is not \"reject\" or \"delay\"",
            ],
        ),
        (
            good_but(
                "window = \"1m\"",
                "window = \"1m\"\non_limit = \"delay\"\nmax_delay = \"2m\"",
            ),
            &["max_delay", "must be between 1ms and 60s"],
        ),
        (
            good_but(
                "algorithm = \"sliding_window\"\nlimit = 100\nwindow = \"1m\"",
                "algorithm = \"concurrency\"\nlimit = 4\nwindow = \"1m\"\nlease = \"2h\"",
            ),
            &[
                "rule \"api-per-client\" window",
                "does not apply to algorithm = \"concurrency\"",
                "rule \"api-per-client\" lease",
                "must be between 1s and 1h",
            ],
        ),
        (
            good_but(
                "window = \"1m\"",
                "window = \"1m\"\ndescriptor = { domain = \"edge\", entries = [\"remote_address\"] }",
            ),
            &[
                "rule \"api-per-client\" descriptor",
                "takes no match: it decides Envoy descriptors, not requests",
                "takes no key",
            ],
        ),
        (
            good_but(
                "window = \"1m\"",
                "window = \"1m\"\ndescriptor = { domain = \"edge\" }",
            ),
            &["rule \"api-per-client\" descriptor.entries", "missing"],
        ),
        (
            good_but(
                "algorithm = \"sliding_window\"\nlimit = 100\nwindow = \"1m\"",
                "algorithm = \"concurrency\"\nlimit = 4\ndescriptor = { domain = \"edge\", entries = [\"a\"] }",
            ),
            &[
                "rule \"api-per-client\" descriptor",
                "does not apply to algorithm = \"concurrency\"",
            ],
        ),
        (
            good_but(
                "algorithm = \"sliding_window\"\nlimit = 100\nwindow = \"1m\"",
                "algorithm = \"sliding_log\"\nlimit = 100\nwindow = \"1m\"\nconsistency = \"batched\"",
            ),
            &["rule \"api-per-client\" consistency", "not sliding_log"],
        ),
        (
            good_but(
                "window = \"1m\"",
                "window = \"1m\"\nconsistency = \"batched\"\nshadow = true\ncount_status = [401]",
            ),
            &[
                "rule \"api-per-client\" shadow",
                "rule \"api-per-client\" count_status",
                "does not go with consistency = \"batched\"",
            ],
        ),
        (
            good_but(
                "consistency = \"exact\"",
                "consistency = \"batched\"\non_limit = \"delay\"",
            ),
            &["rule \"per-key\" on_limit", "cannot hold requests"],
        ),
        (
            good_but(
                "algorithm = \"sliding_window\"\nlimit = 100\nwindow = \"1m\"",
                "algorithm = \"concurrency\"\nlimit = 4\nconsistency = \"batched\"",
            ),
            &[
                "rule \"api-per-client\" consistency",
                "does not apply to algorithm = \"concurrency\"",
            ],
        ),
        (
            good_but("consistency = \"exact\"", "consistency = \"eventual\""),
            &[
                "rule \"per-key\" consistency",
                "\"eventual\" is not \"exact\" or \"batched\"",
            ],
        ),
        (
            good_but("[admin]", "[grpc]\nlisten = \"nowhere\"\n[admin]"),
            &["grpc.listen", "nowhere"],
        ),
        (
            good_but("window = \"1m\"", "window = \"1m\"\nlease = \"30s\""),
            &[
                "rule \"api-per-client\" lease",
                "only applies to algorithm = \"concurrency\"",
            ],
        ),
        (
            good_but("block_for = \"15m\"", "block_for = []"),
            &["rule \"per-key\" block_for", "1 to 16 steps, got 0"],
        ),
        (
            good_but("name = \"per-key\"", "name = \"api-per-client\""),
            &[
                "rule \"api-per-client\" (#2) name",
                "duplicate rule name: rule #1 has it too",
            ],
        ),
        (
            good_but("\"127.0.0.1/32\", \"::1/128\"", "\"127.0.0.1/33\""),
            &["server.trusted_proxies", "127.0.0.1/33"],
        ),
        (
            good_but("\"ip:203.0.113.0/24\"", "\"ip:203.0.113.0/24x\""),
            &["access.deny", "ip:203.0.113.0/24x"],
        ),
        (
            good_but("burst = 20", "burst = 20\nburts = 5"),
            &["rule \"per-key\" burts", "unknown field"],
        ),
        (
            good_but("[store]", "[stroe]\nbackend = \"memory\"\n[store]"),
            &["stroe", "unknown field"],
        ),
    ];
    std::thread::scope(|s| {
        for (config, expected) in &cases {
            s.spawn(move || assert_refused(config, expected));
        }
    });
}

#[test]
fn every_problem_of_one_file_is_listed_at_once() {
    let config = r#"
sever = 1
[server]
listen = "{listen}"
trusted_proxies = ["10.0.0.0/33"]
[store]
timeout = "fast"
[admin]
listen = "{admin}"
[access]
deny = ["ip:300.1.2.3"]
[[rule]]
name = "a"
algorithm = "leaky_bucket"
limit = 10
window = "1m"
[[rule]]
name = "b"
limit = 0
window = "1m"
[[rule]]
name = "c"
limit = 5
window = "10 sec"
[[rule]]
name = "a"
limit = 5
window = "1m"
limt = 3
"#;
    let expected = [
        "9 problems",
        "sever: unknown field",
        "server.trusted_proxies: \"10.0.0.0/33\"",
        "store.timeout: \"fast\"",
        "access.deny: \"ip:300.1.2.3\"",
        "rule \"a\" (#1) algorithm: unknown algorithm \"leaky_bucket\"",
        "rule \"b\" limit: must be at least 1, got 0",
        "rule \"c\" window: \"10 sec\"",
        "rule \"a\" (#4) limt: unknown field",
        "rule \"a\" (#4) name: duplicate rule name: rule #1 has it too",
    ];
    assert_refused(config, &expected);
    // One line per problem, each naming the file.
    let (_, _, stderr) = check_config(config);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("c.toml: ")).count(),
        1 + 9,
        "{stderr}"
    );
}

#[test]
fn unreadable_files_and_broken_toml_are_refused_without_a_panic() {
    assert_refused("[server\nlisten = 1", &["line 1"]);
    assert_refused("[[rule]]\nname = \"x\"\nlimit = \"ten\"", &["line 3"]);
    assert_refused("\u{0}\u{1}binary", &["c.toml"]);
    assert_refused(
        "[[rule]]\nname = \"no-window\"\nlimit = 5\n",
        &["rule \"no-window\" window", "missing"],
    );
    assert_refused(
        "[admin]\nlisten = \"0.0.0.0:9\"\n",
        &["admin.token", "not a loopback address"],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["check-config", "/nonexistent/floodgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be read"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_summary_names_the_redis_layout_and_never_prints_a_password() {
    let cases = [
        (
            "url = \"redis://app:s3cret@127.0.0.1:6379/0\"",
            "redis redis://app:***@127.0.0.1:6379/0",
        ),
        (
            "urls = [\"redis://app:s3cret@127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]",
            "redis cluster, seeds redis://app:***@127.0.0.1:7000, redis://127.0.0.1:7001",
        ),
    ];
    for (servers, expected) in cases {
        let config = format!("[store]\nbackend = \"redis\"\n{servers}\n");
        let (code, stdout, stderr) = check_config(&config);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
        assert!(!stdout.contains("s3cret"), "password printed:\n{stdout}");
    }
}

/// An admin API without a token is said out loud, and the placeholder
/// tokens examples show are no token at all.
#[test]
fn check_config_warns_of_an_open_admin_api_and_refuses_placeholders() {
    let (code, stdout, stderr) = check_config(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("WITHOUT A TOKEN"), "{stdout}");
    let with_token = good_but(
        "listen = \"{admin}\"",
        "listen = \"{admin}\"\ntoken = \"9c2f6b1e4d8a7c3b5e0f1a2d3c4b5a69\"",
    );
    let (code, stdout, stderr) = check_config(&with_token);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(token set)"), "{stdout}");
    assert!(
        !stdout.contains("9c2f6b1e"),
        "the token itself is never printed: {stdout}"
    );
    for placeholder in ["change-me", "..."] {
        let config = good_but(
            "listen = \"{admin}\"",
            &format!("listen = \"{{admin}}\"\ntoken = \"{placeholder}\""),
        );
        assert_refused(
            &config,
            &["admin.token", "placeholder", "openssl rand -hex 32"],
        );
    }
    assert_refused("# a comment, nothing else\n", &["sets nothing"]);
}
