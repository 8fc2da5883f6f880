//! The operating commands (`floodgate blocks | block | unblock | inspect |
//! override | top`) run as a user runs them: the real binary, against a
//! running instance's admin API, the token only from the environment;
//! tables without colour when the output is not a terminal, with colour in
//! a real pseudo-terminal (util-linux's `script`), none under `NO_COLOR`;
//! `--json` for scripts; exit 1 with the API's problem detail.

use std::net::SocketAddr;
use std::process::{Command, Output};

use crate::support::http::Http;
use crate::support::process::{Floodgate, TOKEN, store_section};

const CONFIG: &str = "[server]\nlisten = \"{listen}\"\n{store}\n[admin]\nlisten = \"{admin}\"\n\
                      [[rule]]\nname = \"per-client\"\nmatch = { path_prefix = \"/api/\" }\nkey = \"ip\"\n\
                      algorithm = \"fixed_window\"\nlimit = 5\nwindow = \"1h\"\n";

fn floodgate(admin: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    cmd.args(args)
        .env("FLOODGATE_ADMIN_URL", format!("http://{admin}"))
        .env_remove("FLOODGATE_ADMIN_TOKEN")
        .env_remove("NO_COLOR");
    if let Some(token) = token {
        cmd.env("FLOODGATE_ADMIN_TOKEN", token);
    }
    cmd.output().expect("the floodgate binary runs")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `args` run in a pseudo-terminal by `script`, with `env` set: what the
/// terminal showed.
fn in_terminal(admin: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> String {
    let command = std::iter::once(env!("CARGO_BIN_EXE_floodgate"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env("FLOODGATE_ADMIN_URL", format!("http://{admin}"))
        .env("FLOODGATE_ADMIN_TOKEN", TOKEN)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("util-linux's script runs (Debian: bsdutils)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_listed_made_and_lifted_from_the_command_line() {
    let fg = Floodgate::launch(CONFIG.replace("{store}", &store_section(None))).await;
    let t = Some(TOKEN);
    let admin = fg.admin;
    let run = |args: &[&str], token: Option<&str>| floodgate(admin, token, args);
    assert_eq!(ok(&run(&["blocks"], t)).trim(), "no blocks in force");

    let out = ok(&run(
        &[
            "block",
            "ip:203.0.113.9",
            "--ttl",
            "10m",
            "--reason",
            "scraping",
        ],
        t,
    ));
    assert!(out.starts_with("blocked ip:203.0.113.9 until "), "{out}");
    assert!(
        out.contains("(10m 0s)") || out.contains("(9m 59s)"),
        "{out}"
    );

    let table = ok(&run(&["blocks"], t));
    for expected in [
        "TARGET",
        "ip:203.0.113.9",
        "manual",
        "scraping",
        "1 block(s)",
    ] {
        assert!(table.contains(expected), "{expected:?} missing:\n{table}");
    }
    assert!(!table.contains('\x1b'), "colour on a pipe:\n{table}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["blocks", "--json"], t))).expect("--json prints JSON");
    assert_eq!(json["blocks"][0]["target"], "ip:203.0.113.9");
    assert_eq!(json["blocks"][0]["reason"], "scraping");

    // In a terminal: coloured; NO_COLOR turns it off.
    let coloured = in_terminal(admin, &[], &["blocks"]);
    let plain = in_terminal(admin, &[("NO_COLOR", "1")], &["blocks"]);
    assert!(
        coloured.contains("\x1b[31mip:203.0.113.9\x1b[0m"),
        "{coloured:?}"
    );
    assert!(
        plain.contains("ip:203.0.113.9") && !plain.contains("\x1b["),
        "{plain:?}"
    );

    // The block is in force: the gateway refuses that client.
    let r = Http::new()
        .get(&fg.url("/api/hello"), &[("x-forwarded-for", "203.0.113.9")])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());

    let out = ok(&run(&["unblock", "ip:203.0.113.9"], t));
    assert!(out.starts_with("unblocked ip:203.0.113.9"), "{out}");
    let r = Http::new()
        .get(&fg.url("/api/hello"), &[("x-forwarded-for", "203.0.113.9")])
        .await;
    assert_eq!(
        r.status, 200,
        "lifted at once on the instance that lifted it"
    );
    let err = failed(&run(&["unblock", "ip:203.0.113.9"], t));
    assert!(err.starts_with("floodgate: 404 Not Found: "), "{err}");

    // A bad request: the API's detail.
    let err = failed(&run(&["block", "ip:not-an-address"], t));
    assert!(err.starts_with("floodgate: 400 Bad Request: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_inspected_and_overridden_and_failures_exit_1() {
    let fg = Floodgate::launch(CONFIG.replace("{store}", &store_section(None))).await;
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(http.get(&fg.url("/api/hello"), &[]).await.status, 200);
    }
    let admin = fg.admin;
    let run = |args: Vec<&str>, token: Option<&str>| floodgate(admin, token, &args);
    let t = Some(TOKEN);
    let table = ok(&run(vec!["inspect", "per-client", "ip:127.0.0.1"], t));
    for expected in [
        "per-client",
        "ip:127.0.0.1",
        "has quota left",
        "remaining",
        "none",
    ] {
        assert!(table.contains(expected), "{expected:?} missing:\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&run(
        vec!["inspect", "per-client", "ip:127.0.0.1", "--json"],
        t,
    )))
    .unwrap();
    assert_eq!(json["remaining"], 2);

    let out = ok(&run(
        vec![
            "override",
            "per-client",
            "ip:127.0.0.1",
            "--limit",
            "50",
            "--window",
            "1m",
            "--ttl",
            "1h",
        ],
        t,
    ));
    assert!(
        out.starts_with(
            "override set for ip:127.0.0.1 on rule per-client: limit 50 per 1m, until "
        ),
        "{out}"
    );
    let table = ok(&run(vec!["inspect", "per-client", "ip:127.0.0.1"], t));
    assert!(table.contains("limit 50 per 1m (store, until "), "{table}");

    // Failures: the API's detail, exit 1.
    let err = failed(&run(vec!["inspect", "nope", "k"], t));
    assert!(
        err.contains("404 Not Found: no rule named \"nope\""),
        "{err}"
    );
    let err = failed(&run(vec!["override", "per-client", "k", "--limit", "0"], t));
    assert!(err.starts_with("floodgate: 4"), "{err}");
    let err = failed(&run(vec!["blocks"], Some("wrong-token")));
    assert!(
        err.contains("401") && err.contains("is not the instance's admin token"),
        "{err}"
    );
    let err = failed(&run(vec!["blocks"], None));
    assert!(err.contains("set FLOODGATE_ADMIN_TOKEN"), "{err}");

    // The token is never a flag.
    let out = floodgate(admin, t, &["blocks", "--token", TOKEN]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Nothing listening: a clear failure, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["blocks", "--admin", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the admin API at http://127.0.0.1:9"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["blocks", "--admin", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_lists_the_heaviest_clients() {
    let fg = Floodgate::launch(CONFIG.replace("{store}", &store_section(None))).await;
    let http = Http::new();
    for (client, n) in [("203.0.113.1", 8), ("203.0.113.2", 3)] {
        for _ in 0..n {
            http.get(&fg.url("/api/hello"), &[("x-forwarded-for", client)])
                .await;
        }
    }
    let admin = fg.admin;
    let table = ok(&floodgate(admin, Some(TOKEN), &["top", "-n", "5"]));
    let first = table
        .lines()
        .position(|l| l.contains("ip:203.0.113.1"))
        .expect("the heaviest client is listed");
    let second = table
        .lines()
        .position(|l| l.contains("ip:203.0.113.2"))
        .expect("the second client is listed");
    assert!(first < second, "heaviest first:\n{table}");
    let row = table.lines().nth(first).unwrap();
    // 8 requests on a limit of 5: 5 admitted, 3 refused.
    assert!(row.contains(" 5 ") && row.contains(" 3 "), "{row}");
    let json: serde_json::Value = serde_json::from_str(&ok(&floodgate(
        admin,
        Some(TOKEN),
        &["top", "--rule", "per-client", "-n", "1", "--json"],
    )))
    .unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    assert_eq!(json[0]["key"], "ip:203.0.113.1");
    let err = failed(&floodgate(admin, Some(TOKEN), &["top", "--rule", "nope"]));
    assert!(err.contains("404"), "{err}");
}
