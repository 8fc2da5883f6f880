//! What open dashboards cost the gateway: requests per second and the
//! server's CPU per request through the gateway, with no dashboard open
//! and with 10 polling as the page does (`/admin/overview`,
//! `/admin/top?n=20` and `/admin/blocks` every two seconds each), in
//! alternating turns of the same run.
//!
//! ```text
//! bench/dashboard.sh
//! cargo bench -p floodgate-server --bench dashboard
//! ```
//!
//! The gateway load: 64 callers on keep-alive HTTP/1.1 connections asking
//! for the demo API's `/api/hello` as 10 000 client addresses, under one
//! memory-store rule far from its limit. Turns of `ROUND`, `TURNS` of each
//! way; the figure is the median over turns of each way's rate and CPU per
//! request, and of their ratio within a turn.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Duration;

use http_body_util::{BodyExt, Empty};

mod common;
use common::{
    CALLERS, GATEWAY_RULE, HttpClient, KEYS, Server, TOKEN, alternate, bench_main, gateway_calls,
    http_client, medians, start, timed,
};

const DASHBOARDS: usize = 10;
const POLL: Duration = Duration::from_secs(2);
const ROUND: Duration = Duration::from_secs(4);
const TURNS: usize = 9;

/// Requests answered through the gateway during `ROUND`, with `dashboards`
/// polling the admin API meanwhile.
async fn round(client: &HttpClient, server: &Server, dashboards: usize) -> u64 {
    let admin = server.admin;
    let pages: Vec<_> = (0..dashboards)
        .map(|d| {
            let client = client.clone();
            tokio::spawn(async move {
                // Spread the pages over the poll period, as tabs opened at
                // different times are.
                tokio::time::sleep(POLL * d as u32 / DASHBOARDS as u32).await;
                loop {
                    for path in ["/admin/overview", "/admin/top?n=20", "/admin/blocks"] {
                        let request = http::Request::get(format!("http://{admin}{path}"))
                            .header("authorization", format!("Bearer {TOKEN}"))
                            .body(Empty::new())
                            .unwrap();
                        let r = client.request(request).await.unwrap();
                        assert_eq!(r.status(), 200, "{path}");
                        r.into_body().collect().await.unwrap();
                    }
                    tokio::time::sleep(POLL).await;
                }
            })
        })
        .collect();
    let done = gateway_calls(client, server.http, CALLERS, KEYS, ROUND).await;
    // The pages may be between polls: stopped where they are, so the round
    // ends when the gateway's callers do.
    for page in pages {
        page.abort();
    }
    done
}

fn main() {
    bench_main("dashboard", "bench/dashboard.sh", || async {
        let server = start(
            &format!("[store]\nbackend = \"memory\"\n{GATEWAY_RULE}"),
            TOKEN,
        );
        let pid = server.child.id();
        let client = http_client(CALLERS + DASHBOARDS);
        round(&client, &server, DASHBOARDS).await; // warm up
        let rows = alternate(
            TURNS,
            async || timed(pid, round(&client, &server, 0)).await,
            async || timed(pid, round(&client, &server, DASHBOARDS)).await,
        )
        .await;
        let m = medians(&rows);
        println!(
            "gateway with {CALLERS} callers, median of {TURNS} turns of {ROUND:?}: no dashboard {:.0} req/s {:.1} us CPU/req; {DASHBOARDS} dashboards open {:.0} req/s {:.1} us CPU/req; open / none: rate {:.3}x, CPU per request {:.3}x (turns: rate {:.3}-{:.3}x)",
            m.a.rate,
            m.a.cpu_us,
            m.b.rate,
            m.b.cpu_us,
            m.rate_ratio,
            m.cpu_ratio,
            rows.iter()
                .map(|r| r.1.rate / r.0.rate)
                .fold(f64::INFINITY, f64::min),
            rows.iter().map(|r| r.1.rate / r.0.rate).fold(0.0, f64::max),
        );
    });
}
