//! The dashboard in a real browser: Debian's chromium, headless, driven
//! over WebDriver by chromedriver (fantoccini). The page asks for the
//! token (a wrong one is refused), shows a rule's refusals rising after a
//! burst, blocks a client from the top list (its next request gets 403),
//! and unblocks it. A screenshot is left in target/test-artifacts/.
//! The assets are served with a strict Content-Security-Policy.

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use floodgate_testkit::free_port;

use crate::support::host::{self, find_program};
use crate::support::http::Http;
use crate::support::process::{Floodgate, ProcessGroup, TOKEN, store_section};

const CONFIG: &str = "[server]\nlisten = \"{listen}\"\n{store}\n[admin]\nlisten = \"{admin}\"\n\
                      [[rule]]\nname = \"per-client\"\nmatch = { path_prefix = \"/api/\" }\nkey = \"ip\"\n\
                      algorithm = \"fixed_window\"\nlimit = 5\nwindow = \"1h\"\n";

const CLIENT: &str = "203.0.113.50";

fn program(var: &str, name: &str) -> std::path::PathBuf {
    find_program(var, name, &[&format!("/usr/bin/{name}")]).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: the dashboard is tested in a real browser. \
             Run scripts/test.sh (it installs Debian's chromium and chromium-driver), \
             or set {var}"
        )
    })
}

/// chromedriver on a free port, and a headless chromium session through it.
async fn browser(dir: &std::path::Path) -> (ProcessGroup, Client) {
    let chromium = program("FLOODGATE_TEST_CHROMIUM", "chromium");
    let driver = program("FLOODGATE_TEST_CHROMEDRIVER", "chromedriver");
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"));
    let driver = ProcessGroup::spawn(cmd, &dir.join("chromedriver.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", dir.join("profile").display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session through chromedriver");
    (driver, client)
}

/// Waits up to `within` for the text of `css` to satisfy `ok`; its last text.
async fn wait_text(
    client: &Client,
    css: &str,
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: still {last:?} after {within:?}");
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_in(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

async fn gone(client: &Client, css: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if client.find(Locator::Css(css)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} is still on the page after {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_refusals_blocks_a_top_client_and_unblocks_it() {
    let fg = Floodgate::launch(CONFIG.replace("{store}", &store_section(None))).await;
    let dir = host::temp_dir("dashboard");
    let http = Http::new();

    // The assets: a strict policy, no token needed.
    for path in ["/", "/dashboard.js", "/dashboard.css"] {
        let r = http.get(&fg.admin_url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp:?}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(
        http.get(&fg.admin_url("/admin/overview"), &[]).await.status,
        401
    );

    let (_driver, client) = browser(dir.path()).await;
    client.goto(&fg.admin_url("/")).await.unwrap();

    // A wrong token is refused and the form comes back.
    type_in(&client, "#token-input", "not-the-token").await;
    click(&client, "#token-submit").await;
    wait_text(&client, "#error", Duration::from_secs(10), |t| {
        t.contains("token was refused")
    })
    .await;

    type_in(&client, "#token-input", TOKEN).await;
    click(&client, "#token-submit").await;
    let refused = "#rules-table tr[data-rule='per-client'] td.refused";
    wait_text(&client, refused, Duration::from_secs(10), |t| t == "0").await;
    let status = wait_text(&client, "#store-status", Duration::from_secs(5), |t| {
        t.contains("healthy")
    })
    .await;
    assert!(
        status.contains("memory") && status.contains("on_error allow"),
        "{status}"
    );
    // The token is kept for the tab, never in the URL.
    assert!(!client.current_url().await.unwrap().as_str().contains(TOKEN));

    // A burst from one client: 5 admitted, 5 refused; the page follows.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            http.get(&fg.url("/api/hello"), &[("x-forwarded-for", CLIENT)])
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    wait_text(&client, refused, Duration::from_secs(10), |t| t == "5").await;

    // Block it from the top list.
    let row = format!("#top-table tr[data-key='ip:{CLIENT}']");
    wait_text(&client, &row, Duration::from_secs(10), |t| {
        t.contains("per-client")
    })
    .await;
    click(&client, &format!("{row} button.block")).await;
    let block_row = format!("#blocks-table tr[data-target='ip:{CLIENT}']");
    let listed = wait_text(&client, &block_row, Duration::from_secs(10), |t| {
        t.contains("manual")
    })
    .await;
    assert!(listed.contains("dashboard"), "{listed}");
    let r = http
        .get(&fg.url("/api/hello"), &[("x-forwarded-for", CLIENT)])
        .await;
    assert_eq!(
        r.status,
        403,
        "the blocked client's next request: {}",
        r.text()
    );

    let shot = client.screenshot().await.unwrap();
    let artifacts = host::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");

    // Unblock it: over its limit again, not blocked.
    click(&client, &format!("{block_row} button.unblock")).await;
    gone(&client, &block_row, Duration::from_secs(10)).await;
    let r = http
        .get(&fg.url("/api/hello"), &[("x-forwarded-for", CLIENT)])
        .await;
    assert_eq!(
        r.status,
        429,
        "unblocked, still over the limit: {}",
        r.text()
    );
    client.close().await.unwrap();
}
