//! docs/DEPLOY.md §3 (PM2 behind nginx), walked the way a newcomer walks it,
//! on this machine: Debian's nginx with its default site enabled, Debian's
//! Redis, PM2 from npm.
//!
//! Every ```sh block of §3 runs, in order, in one bash session (so a
//! variable set in one block is there in the next, as in a terminal), with
//! `set -e`: a failing command fails the walk with its block and output. The
//! commands are taken from the document, never copied, with a few
//! substitutions ([`SUBSTITUTIONS`]): the floodgate that cargo built for
//! this test stands in for `target/release/floodgate`, so `cargo build
//! --release` is not run; and, the walk having no network, `apt-get
//! update` is not run and npm installs PM2 from its cache
//! (`scripts/test.sh` installs the packages and puts pm2@7 in the cache). A ```text block
//! after a ```sh block is that block's expected output: each of its lines
//! must appear, in order (`…` stands for anything). Where a command
//! differs with and without systemd, the walk takes the branch without it.
//!
//! Between the blocks the test checks what a user would: requests reach the
//! API through nginx with RateLimit headers; one key's limit is shared by
//! the four instances; a block added through one instance's admin API
//! refuses the client on all four (and how long that took); `pm2 reload`
//! under load fails no request; the logs hold no warning (nginx: only its
//! retries of a restarting instance); the boot unit PM2 writes; and after
//! the uninstall block, nothing of floodgate is left.
//!
//! Isolation: the walk runs in its own mount, network and pid namespaces
//! (`unshare`), with overlays on /etc, /usr, /var and /root whose writes go
//! to a tmpfs, and fresh tmpfs on /run and /tmp. Ports 80, 3000, 6379,
//! 8081-8084 and 9091-9094 are its own, no file of the host changes, and
//! every process it starts dies with the namespace's first process, also
//! when the walk fails or runs out of time. Afterwards the test compares
//! the host's files the walk would write ([`HOST_PATHS`]) with what they
//! were before. The test binary runs itself inside the namespaces: with
//! `FLOODGATE_WALK_SCRATCH` set it is the walk, without it the driver.
//!
//! Needs root, util-linux's `unshare`, iproute2, nginx, redis-server,
//! Node.js and npm with pm2@7 in npm's cache: `scripts/test.sh` sees to
//! all of it. Without them the test fails and says what is missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::support::host::{self, repo_root};
use crate::support::http::Http;
use crate::support::logs::assert_log_lines_clean;
use crate::support::machine;
use crate::support::pm2::{self, Pm2Process};
use crate::support::procfs;
use crate::support::upstream::Upstream;
use crate::support::wait::{avoid_window_boundary, wait_for};

/// This test's function: the driver runs the binary again with its name
/// ([`test_name`]), inside the namespaces.
const TEST_FN: &str = "deploy_md_pm2_behind_nginx_walks_on_a_stock_debian_host";

/// This test's name as the test harness knows it (and `--exact` wants it):
/// its module path in the test binary, without the binary's name.
fn test_name() -> String {
    let path = module_path!();
    let module = path.split_once("::").map_or(path, |(_, module)| module);
    format!("{module}::{TEST_FN}")
}
/// Set (to the tmpfs mount point) when the binary runs as the walk.
const SCRATCH_VAR: &str = "FLOODGATE_WALK_SCRATCH";
/// Bound on the whole walk; the driver kills the namespaces after it.
const WALK_DEADLINE: Duration = Duration::from_secs(300);
/// Bound on one block of the document.
const BLOCK_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on anything else the walk waits for.
const WAIT: Duration = Duration::from_secs(30);

/// What the walk installs would write on the host, were it not isolated:
/// compared before and after.
const HOST_PATHS: &[&str] = &[
    "/etc/nginx",
    "/etc/floodgate",
    "/etc/systemd/system",
    "/etc/redis",
    "/usr/local/bin",
    "/usr/lib/node_modules",
    "/usr/bin/pm2",
    "/var/log/floodgate",
    "/var/log/nginx",
    "/var/lib/redis",
    "/root/.pm2",
];
/// Directories the walk sees through an overlay: reads from the host,
/// writes to a tmpfs.
const OVERLAID: &[&str] = &["/etc", "/usr", "/var", "/root"];

/// Replacements in §3's text before it runs: (as written, as run). Each
/// must occur, so a change of the document that drops one fails the test.
const SUBSTITUTIONS: &[(&str, &str)] = &[
    // Built by cargo for this test (a debug build; a release build would
    // take minutes longer and test the same commands).
    ("cargo build --release --locked", "true"),
    ("target/release/floodgate", env!("CARGO_BIN_EXE_floodgate")),
    // No network in the walk: the package lists stay as they are, and
    // scripts/test.sh installed the packages (`apt-get install` then has
    // nothing to do).
    ("apt-get update\n", "true\n"),
];

/// The environment of the walk's shell, as after `sudo -i` on Debian minus
/// `USER` (which PM2 would otherwise use to name its unit: the document
/// passes `-u root`). npm installs from its cache: the walk has no network.
const SHELL_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("npm_config_offline", "true"),
    ("npm_config_update_notifier", "false"),
];

/// The instances of deploy/ecosystem.config.js: ports 8081.., admin 9091...
const INSTANCES: u16 = 4;
const API: &str = "127.0.0.1:3000";

#[test]
fn deploy_md_pm2_behind_nginx_walks_on_a_stock_debian_host() {
    match std::env::var_os(SCRATCH_VAR) {
        Some(scratch) => walk(Path::new(&scratch)),
        None => drive(),
    }
}

// ---------------------------------------------------------------------------
// Outside: start the walk in its namespaces, bound it, check the host.

fn drive() {
    // The walk loads both cores for minutes: it runs alone.
    let _alone = machine::alone();
    preflight();
    let before = fingerprint(HOST_PATHS);
    let dir = host::temp_dir("deploy-walk");
    let scratch = dir.path().join("mnt");
    std::fs::create_dir_all(&scratch).unwrap();
    let log_path = dir.path().join("walk.log");
    let log = std::fs::File::create(&log_path).unwrap();

    // bash is the namespace's first process: it reaps the daemons the walk
    // leaves behind, and when it exits the kernel kills everything left in
    // the namespace. --kill-child: if unshare is killed, so is bash.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--",
        "bash",
        "-c",
        r#""$@"; exit $?"#,
        "walk-init",
    ])
    .arg(std::env::current_exe().unwrap())
    .arg(test_name())
    .args(["--exact", "--nocapture", "--test-threads=1"])
    .env(SCRATCH_VAR, &scratch)
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run unshare");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > WALK_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!("{output}");
    match status {
        None => panic!("the walk did not finish within {WALK_DEADLINE:?}; its output is above"),
        Some(s) => assert!(
            s.success(),
            "the walk failed ({s}) after {:.1} s; its output is above",
            took.as_secs_f64()
        ),
    }
    assert!(
        output.contains("test result: ok. 1 passed"),
        "the walk inside the namespaces did not run (filtered out?); its output is above"
    );

    let after = fingerprint(HOST_PATHS);
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| {
            format!(
                "{p}: {} -> {}",
                before.get(p).map_or("absent", String::as_str),
                after.get(p).map_or("absent", String::as_str)
            )
        })
        .collect();
    assert!(
        changed.is_empty(),
        "the walk changed the host: {changed:#?}"
    );
    eprintln!(
        "[deploy-walk] walk done in {:.1} s; the host's {} files under {HOST_PATHS:?} are unchanged",
        took.as_secs_f64(),
        after.len()
    );
}

/// Fails, saying what to do, when the walk cannot run here.
fn preflight() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the deploy walk runs DEPLOY.md's commands as root (apt-get, /etc, port 80) inside \
         namespaces of its own, which needs root: run the tests as root (scripts/test.sh in CI)"
    );
    let missing: Vec<&str> = [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("nginx", "nginx"),
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
        ("node", "nodejs"),
        ("npm", "npm"),
        ("openssl", "openssl"),
        ("curl", "curl"),
        ("runuser", "util-linux"),
    ]
    .iter()
    .filter(|(tool, _)| {
        !["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists())
    })
    .map(|(_, package)| *package)
    .collect();
    assert!(
        missing.is_empty(),
        "the deploy walk needs these Debian packages: {missing:?}. scripts/test.sh installs them"
    );
}

/// Every file and directory under `roots`: kind, mode, size, mtime and
/// link target, by path ("absent" for a missing root).
fn fingerprint(roots: &[&str]) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo: Vec<PathBuf> = roots.iter().map(PathBuf::from).collect();
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            out.insert(path.display().to_string(), "absent".to_owned());
            continue;
        };
        let mut line = format!(
            "mode {:o} size {} mtime {}.{:09}",
            meta.mode(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        if meta.file_type().is_symlink() {
            line.push_str(&format!(" -> {:?}", std::fs::read_link(&path).ok()));
        } else if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            todo.extend(entries.filter_map(|e| Some(e.ok()?.path())));
        }
        out.insert(path.display().to_string(), line);
    }
    out
}

// ---------------------------------------------------------------------------
// Inside: the walk.

fn walk(scratch: &Path) {
    let started = Instant::now();
    isolate(scratch);
    stock_host();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The API of DEPLOY.md's "your API on 127.0.0.1:3000".
    let upstream = rt.block_on(Upstream::start_on(API.parse().unwrap()));

    let blocks = section_blocks();
    eprintln!(
        "[deploy-walk] DEPLOY.md §3: {} sh blocks, {} with expected output",
        blocks.len(),
        blocks.iter().filter(|b| !b.expected.is_empty()).count()
    );
    let mut checks = Checks::new(&rt);
    let mut shell = Shell::start(&repo_root());
    for (i, block) in blocks.iter().enumerate() {
        checks.before(block);
        let took = Instant::now();
        let output = shell.run(i, &block.code);
        eprintln!(
            "[deploy-walk] block {i} ({:.1} s): {}\n{}",
            took.elapsed().as_secs_f64(),
            block.code.lines().next().unwrap_or_default(),
            indent(&output)
        );
        expect_output(i, block, &output);
        checks.after(block);
    }
    checks.assert_all_ran();
    assert!(
        upstream.hits() > 0,
        "no request reached the API on {API} through floodgate"
    );
    eprintln!(
        "[deploy-walk] every block of DEPLOY.md §3 ran; {} requests reached the API; {:.1} s",
        upstream.hits(),
        started.elapsed().as_secs_f64()
    );
}

/// Mounts the overlays and tmpfs, brings up loopback.
fn isolate(scratch: &Path) {
    run_ok(
        "mount",
        &[
            "-t",
            "tmpfs",
            "walk-scratch",
            &scratch.display().to_string(),
        ],
    );
    for dir in OVERLAID {
        let name = dir.trim_start_matches('/');
        let (upper, work) = (
            scratch.join(name).join("upper"),
            scratch.join(name).join("work"),
        );
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let options = format!(
            "lowerdir={dir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        run_ok(
            "mount",
            &["-t", "overlay", "walk-overlay", "-o", &options, dir],
        );
    }
    // No systemd, no daemon of the host (pid files, sockets); /tmp last, as
    // the scratch mount lives under the host's /tmp.
    run_ok("mount", &["-t", "tmpfs", "walk-run", "/run"]);
    run_ok("mount", &["-t", "tmpfs", "walk-tmp", "/tmp"]);
    run_ok("ip", &["link", "set", "lo", "up"]);
}

/// The state of a stock Debian 12 host with the packages installed and
/// nothing started: Debian's default nginx site enabled. Also proves that
/// deploy/nginx.conf does not silently lose to it: with both, `nginx -t`
/// fails.
fn stock_host() {
    let default_site = Path::new("/etc/nginx/sites-enabled/default");
    if std::fs::symlink_metadata(default_site).is_err() {
        eprintln!(
            "[deploy-walk] this host has no default nginx site: enabling Debian's, as on a stock host"
        );
        std::os::unix::fs::symlink("/etc/nginx/sites-available/default", default_site).unwrap();
    }
    assert!(
        !Path::new("/etc/floodgate").exists()
            && !Path::new("/etc/nginx/conf.d/floodgate.conf").exists(),
        "this host already has floodgate installed in /etc: the walk wants a host without it"
    );
    let site = Path::new("/etc/nginx/conf.d/floodgate.conf");
    std::fs::copy(repo_root().join("deploy/nginx.conf"), site).unwrap();
    let out = Command::new("nginx").arg("-t").output().unwrap();
    std::fs::remove_file(site).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("duplicate default server"),
        "deploy/nginx.conf next to Debian's default site must fail `nginx -t` \
         (duplicate default_server), not lose to it silently: {stderr}"
    );
}

/// One ```sh block of §3, and the ```text block after it, if any.
struct Block {
    code: String,
    /// Lines the output must contain, in order.
    expected: Vec<String>,
}

/// §3 of docs/DEPLOY.md with [`SUBSTITUTIONS`] made, as blocks.
fn section_blocks() -> Vec<Block> {
    let doc = std::fs::read_to_string(repo_root().join("docs/DEPLOY.md")).unwrap();
    let start = doc
        .find("\n## 3. PM2 behind nginx")
        .expect("DEPLOY.md has no \"## 3. PM2 behind nginx\"");
    let end = start
        + doc[start + 1..]
            .find("\n## ")
            .expect("DEPLOY.md §3 has no next section");
    let mut section = doc[start..=end].to_owned();
    for (written, run) in SUBSTITUTIONS {
        assert!(
            section.contains(written),
            "DEPLOY.md §3 no longer contains `{written}`: update the walk's SUBSTITUTIONS"
        );
        section = section.replace(written, run);
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let fence = match line.trim_end() {
            "```sh" => "sh",
            "```text" => "text",
            _ => continue,
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_end() != "```")
            .collect();
        if fence == "sh" {
            blocks.push(Block {
                code: body.join("\n"),
                expected: Vec::new(),
            });
        } else {
            let last = blocks
                .last_mut()
                .expect("a ```text block before any ```sh block in DEPLOY.md §3");
            last.expected = body.iter().map(|l| (*l).to_owned()).collect();
        }
    }
    assert!(
        blocks.len() >= 10,
        "only {} sh blocks in DEPLOY.md §3",
        blocks.len()
    );
    blocks
}

/// Each expected line, in order, in `output`; `…` matches anything.
fn expect_output(i: usize, block: &Block, output: &str) {
    let mut at = 0;
    for line in block.expected.iter().filter(|l| !l.trim().is_empty()) {
        let mut found = None;
        // The line's pieces, each after the last, all on one output line.
        for (n, out_line) in output[at..].split_inclusive('\n').scan(at, |pos, l| {
            let here = *pos;
            *pos += l.len();
            Some((here, l))
        }) {
            let mut from = 0;
            let all = line
                .split('…')
                .all(|piece| match out_line[from..].find(piece) {
                    Some(p) => {
                        from += p + piece.len();
                        true
                    }
                    None => false,
                });
            if all {
                found = Some(n + out_line.len());
                break;
            }
        }
        at = found.unwrap_or_else(|| {
            panic!(
                "block {i} of DEPLOY.md §3:\n{}\nits output lacks the documented line {line:?} \
                 (in order).\nOutput:\n{output}",
                block.code
            )
        });
    }
}

/// One bash session, as a user's terminal: blocks are typed into it one
/// after the other.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start(cwd: &Path) -> Self {
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .env_clear()
            .envs(SHELL_ENV.iter().copied())
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Daemons started by the walk inherit the pipe and keep it open:
        // this thread ends with the namespace.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        stdin.write_all(b"exec 2>&1\nset -e -o pipefail\n").unwrap();
        Shell {
            child,
            stdin,
            lines,
        }
    }

    /// Types `code` and waits for it to finish: its output. Fails if a
    /// command fails (the shell exits) or it takes too long.
    fn run(&mut self, i: usize, code: &str) -> String {
        let marker = format!("@@walk-block-{i}-done");
        let typed = format!("{code}\necho '{marker}'\n");
        let mut output = String::new();
        // A shell that already exited fails below, with its output.
        let _ = self.stdin.write_all(typed.as_bytes());
        let deadline = Instant::now() + BLOCK_DEADLINE;
        loop {
            // Err: nothing for 100 ms, or the shell and every daemon it
            // started are gone; the exit check below tells.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = line.strip_suffix(&marker) {
                    output.push_str(rest);
                    return output;
                }
                output.push_str(&line);
                output.push('\n');
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // What it printed last, still on its way.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    output.push_str(&line);
                    output.push('\n');
                }
                let hint = if output.contains("ENOTCACHED") {
                    "\nnpm has no pm2@7 in its cache: scripts/test.sh puts it there (`npm install --prefer-offline pm2@7` into a scratch prefix)"
                } else {
                    ""
                };
                panic!(
                    "block {i} of DEPLOY.md §3 failed (the shell exited: {status}):\n{code}\n\
                     output:\n{output}{hint}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "block {i} of DEPLOY.md §3 did not finish within {BLOCK_DEADLINE:?}:\n{code}\noutput so far:\n{output}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// What a user checks, between the blocks.

/// The checks, each tied to the block whose command it follows.
struct Checks<'rt> {
    rt: &'rt tokio::runtime::Runtime,
    http: Http,
    /// Block texts the checks hang on, and whether each was seen.
    seen: BTreeMap<&'static str, bool>,
    load: Option<Load>,
    pids_before_reload: Vec<u32>,
}

/// Hooks: a check runs after (or around) the first block containing these.
const AFTER_START: &str = "pm2 start /etc/floodgate/ecosystem.config.js";
const AFTER_READY: &str = "/readyz";
const AROUND_RELOAD: &str = "pm2 reload floodgate --parallel 1";
const AFTER_STARTUP: &str = "pm2 startup systemd -u root --hp /root";
const AFTER_METRICS: &str = "/metrics";
const AROUND_UNINSTALL: &str = "pm2 delete floodgate";

impl<'rt> Checks<'rt> {
    fn new(rt: &'rt tokio::runtime::Runtime) -> Self {
        Checks {
            rt,
            http: Http::new(),
            seen: [
                AFTER_START,
                AFTER_READY,
                AROUND_RELOAD,
                AFTER_STARTUP,
                AFTER_METRICS,
                AROUND_UNINSTALL,
            ]
            .into_iter()
            .map(|k| (k, false))
            .collect(),
            load: None,
            pids_before_reload: Vec::new(),
        }
    }

    /// Whether `block` is the first to contain `hook`'s text.
    fn first(&self, block: &Block, hook: &str) -> bool {
        block.code.contains(hook) && !self.seen[hook]
    }

    fn before(&mut self, block: &Block) {
        if self.first(block, AROUND_RELOAD) {
            self.pids_before_reload = online_instances().iter().map(|p| p.pid).collect();
            self.load = Some(Load::start(self.rt));
        }
        if self.first(block, AROUND_UNINSTALL) {
            logs_are_clean();
        }
    }

    fn after(&mut self, block: &Block) {
        let hooks: Vec<&'static str> = self
            .seen
            .keys()
            .copied()
            .filter(|h| self.first(block, h))
            .collect();
        for hook in hooks {
            match hook {
                AFTER_START => {
                    let names: Vec<String> =
                        online_instances().into_iter().map(|p| p.name).collect();
                    let want: Vec<String> =
                        (0..INSTANCES).map(|i| format!("floodgate-{i}")).collect();
                    assert_eq!(names, want, "pm2 jlist after `{AFTER_START}`");
                }
                AFTER_READY => {
                    self.rt.block_on(self.through_nginx());
                    self.rt.block_on(self.limit_is_shared());
                    self.rt.block_on(self.block_reaches_every_instance());
                }
                AROUND_RELOAD => self.reload_dropped_nothing(),
                AFTER_STARTUP => boot_unit_is_right(),
                AFTER_METRICS => self.rt.block_on(self.scrape_config_matches()),
                AROUND_UNINSTALL => self.rt.block_on(self.nothing_left()),
                _ => unreachable!(),
            }
            self.seen.insert(hook, true);
        }
    }

    fn assert_all_ran(&self) {
        let missed: Vec<&&str> = self
            .seen
            .iter()
            .filter(|(_, s)| !**s)
            .map(|(h, _)| h)
            .collect();
        assert!(
            missed.is_empty(),
            "DEPLOY.md §3 has no block containing {missed:?}: the walk's checks hang on them"
        );
    }

    /// A request through nginx on port 80 reaches the API, with floodgate's
    /// headers.
    async fn through_nginx(&self) {
        let r = self
            .http
            .get(
                "http://127.0.0.1/api/walk",
                &[
                    ("x-api-key", "walk-nginx"),
                    ("x-forwarded-for", "198.51.100.1"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "through nginx: {}", r.text());
        assert_eq!(
            r.header("x-upstream"),
            Some("echo"),
            "through nginx, the answer did not come from the API on {API}"
        );
        let policy = r
            .ratelimit_policy("api-per-key")
            .or(r.ratelimit_policy("per-ip"));
        assert!(
            policy.is_some() && r.header("ratelimit").is_some(),
            "no RateLimit headers through nginx: {:?}",
            r.headers
        );
        eprintln!(
            "[deploy-walk] through nginx: 200 from the API, RateLimit-Policy {:?}, RateLimit {:?}",
            r.header("ratelimit-policy"),
            r.header("ratelimit")
        );
    }

    /// One key's limit (api-per-key, 100 a minute) is counted once across
    /// the four instances: round-robin over their ports, the 101st request
    /// is refused, and every instance's admin API shows the key exhausted.
    async fn limit_is_shared(&self) {
        avoid_window_boundary(Duration::from_secs(60), Duration::from_secs(10)).await;
        let key = "walk-shared";
        let ip = "198.51.100.2";
        let mut admitted = 0;
        for n in 0..100u16 {
            let port = 8081 + n % INSTANCES;
            let r = self
                .http
                .get(
                    &format!("http://127.0.0.1:{port}/api/shared"),
                    &[("x-api-key", key), ("x-forwarded-for", ip)],
                )
                .await;
            if r.status == 200 {
                admitted += 1;
            }
        }
        let over = self
            .http
            .get(
                "http://127.0.0.1:8081/api/shared",
                &[("x-api-key", key), ("x-forwarded-for", ip)],
            )
            .await;
        assert_eq!(
            admitted, 100,
            "of 100 requests within the limit, {admitted} admitted"
        );
        assert_eq!(
            (over.status, over.ratelimit("api-per-key").map(|(r, _)| r)),
            (429, Some(0)),
            "the 101st request of one key, spread over 4 instances: {:?} {}",
            over.headers,
            over.text()
        );
        let auth = format!("Bearer {}", admin_token());
        for port in admin_ports() {
            let url = format!(
                "http://127.0.0.1:{port}/admin/rules/api-per-key/keys/header:x-api-key:{key}"
            );
            let r = self.http.get(&url, &[("authorization", &auth)]).await;
            let body = r.json();
            assert_eq!(body["remaining"], 0, "{url}: {body}");
        }
        eprintln!(
            "[deploy-walk] shared limit: 100 requests round-robin over 4 instances admitted, the 101st refused; every admin API shows 0 remaining"
        );
    }

    /// A block added through instance 0's admin API refuses the client on
    /// all four instances; deleted through instance 3's, it lets it through
    /// on all four. Prints how long each took to reach every instance.
    async fn block_reaches_every_instance(&self) {
        let auth = format!("Bearer {}", admin_token());
        let target = "ip:198.51.100.3";
        let body = format!(r#"{{"target": "{target}", "ttl": "10m", "reason": "walk"}}"#);
        let started = Instant::now();
        let r = self
            .http
            .post_json(
                "http://127.0.0.1:9091/admin/blocks",
                &[("authorization", &auth)],
                &body,
            )
            .await;
        assert_eq!(r.status, 201, "POST /admin/blocks: {}", r.text());
        let blocked = self.until_every_instance_answers(403, started).await;
        let started = Instant::now();
        let r = self
            .http
            .delete(
                &format!("http://127.0.0.1:9094/admin/blocks/{target}"),
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(r.status, 204, "DELETE /admin/blocks: {}", r.text());
        let unblocked = self.until_every_instance_answers(200, started).await;
        eprintln!(
            "[deploy-walk] block through instance 0 refused the client on instances 0-3 after {blocked:?} ms; \
             its removal through instance 3 let it through after {unblocked:?} ms"
        );
    }

    /// Polls each instance, as 198.51.100.3, until it answers `status`: the
    /// milliseconds each took from `since`; fails after 2 s (the admin API
    /// promises 1 s).
    async fn until_every_instance_answers(&self, status: u16, since: Instant) -> Vec<u128> {
        let mut took = Vec::new();
        for port in 8081..8081 + INSTANCES {
            let url = format!("http://127.0.0.1:{port}/api/blocked");
            loop {
                let r = self
                    .http
                    .get(&url, &[("x-forwarded-for", "198.51.100.3")])
                    .await;
                if r.status == status {
                    took.push(since.elapsed().as_millis());
                    break;
                }
                assert!(
                    since.elapsed() < Duration::from_secs(2),
                    "instance on {port} still answers {} instead of {status} after 2 s",
                    r.status
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        took
    }

    /// The load that ran through nginx during `pm2 reload` saw only 200s
    /// and 429s, and every instance was replaced.
    fn reload_dropped_nothing(&mut self) {
        let load = self.load.take().expect("load started before the reload");
        let seen = load.stop(self.rt);
        let after = wait_for(WAIT, "every instance online again after the reload", || {
            let now = online_instances();
            (now.len() == usize::from(INSTANCES)).then_some(now)
        });
        let replaced = after
            .iter()
            .all(|p| !self.pids_before_reload.contains(&p.pid));
        assert!(
            replaced,
            "pm2 reload did not replace every instance: {:?} -> {after:?}",
            self.pids_before_reload
        );
        // DEPLOY.md: PM2 7 stops an instance with SIGINT (there is no
        // per-app kill_signal), and floodgate drains on it.
        for i in 0..INSTANCES {
            let path = format!("/var/log/floodgate/floodgate-{i}.log");
            let log = std::fs::read_to_string(&path).unwrap();
            assert!(
                log.contains("SIGINT"),
                "{path}: PM2 should have stopped the instance with SIGINT:\n{log}"
            );
        }
        // ecosystem.config.js's min_uptime: a reload seconds after the
        // start is not an unstable restart.
        let unstable: Vec<&Pm2Process> = after.iter().filter(|p| p.unstable_restarts > 0).collect();
        assert!(
            unstable.is_empty(),
            "PM2 counts the reload as an unstable restart: {unstable:?}"
        );
        eprintln!("[deploy-walk] during `pm2 reload floodgate --parallel 1`: {seen}");
        assert!(
            seen.failed == 0 && seen.answered > 0,
            "requests failed during the reload: {seen}"
        );
    }

    /// Each scrape target of deploy/prometheus.yml is an instance's admin
    /// port and answers /metrics.
    async fn scrape_config_matches(&self) {
        let text = std::fs::read_to_string(repo_root().join("deploy/prometheus.yml")).unwrap();
        let targets: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- 127.0.0.1:"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect();
        let ports: Vec<String> = admin_ports().map(|p| p.to_string()).collect();
        assert_eq!(
            targets, ports,
            "deploy/prometheus.yml's targets vs the ecosystem file's admin ports"
        );
        for port in ports {
            let r = self
                .http
                .get(&format!("http://127.0.0.1:{port}/metrics"), &[])
                .await;
            assert!(
                r.status == 200 && r.text().contains("floodgate_decisions"),
                "/metrics on {port}: {} {}",
                r.status,
                r.text()
            );
        }
    }

    /// After the uninstall block: no floodgate or PM2 process, no port, no
    /// file, no key in Redis; nginx answers with Debian's default site.
    async fn nothing_left(&self) {
        let left: Vec<String> = processes()
            .into_iter()
            .filter(|c| c.contains("floodgate") || c.starts_with("PM2"))
            .collect();
        assert!(
            left.is_empty(),
            "processes left after the uninstall: {left:?}"
        );
        for port in (8081..8081 + INSTANCES).chain(admin_ports()) {
            assert!(
                TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err(),
                "port {port} still accepts after the uninstall"
            );
        }
        let files = [
            "/etc/floodgate",
            "/var/log/floodgate",
            "/usr/local/bin/floodgate",
            "/etc/nginx/conf.d/floodgate.conf",
            "/etc/systemd/system/pm2-root.service",
            "/etc/systemd/system/pm2-root.service.d",
            "/etc/systemd/system/multi-user.target.wants/pm2-root.service",
            "/usr/bin/pm2",
            "/root/.pm2",
        ];
        let present: Vec<&str> = files
            .into_iter()
            .filter(|f| std::fs::symlink_metadata(f).is_ok())
            .collect();
        assert!(present.is_empty(), "left after the uninstall: {present:?}");
        let keys = command_output("redis-cli", &["--scan", "--pattern", "floodgate*"]);
        assert!(
            keys.trim().is_empty(),
            "floodgate's keys left in Redis: {keys}"
        );
        // `nginx -s reload` returns once it has signalled the master; the
        // new workers take over a moment later. A fresh client: a kept-alive
        // connection would stay with an old worker and its old config.
        let deadline = Instant::now() + WAIT;
        loop {
            let r = Http::new().get("http://127.0.0.1/", &[]).await;
            if r.text().contains("Welcome to nginx!") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after the uninstall nginx should answer with Debian's default site: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "[deploy-walk] after the uninstall: no process, port, file or Redis key of floodgate left; nginx serves its default site"
        );
    }
}

/// The boot unit of `pm2 startup systemd -u root --hp /root` and the
/// drop-in ordering it after Redis; and the saved process list.
fn boot_unit_is_right() {
    let unit = std::fs::read_to_string("/etc/systemd/system/pm2-root.service").unwrap();
    for line in [
        "User=root",
        "Environment=PM2_HOME=/root/.pm2",
        "pm2 resurrect",
    ] {
        assert!(
            unit.contains(line),
            "pm2-root.service lacks {line:?}:\n{unit}"
        );
    }
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/pm2-root.service")
            .is_ok(),
        "pm2-root.service is not enabled"
    );
    let drop_ins: String = std::fs::read_dir("/etc/systemd/system/pm2-root.service.d")
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        drop_ins.contains("After=redis-server.service") && drop_ins.contains("[Unit]"),
        "no drop-in orders pm2-root.service after Redis: {drop_ins}"
    );
    let dump = std::fs::read_to_string("/root/.pm2/dump.pm2").unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let apps: Vec<(&str, &str)> = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or(""),
                a["pm_cwd"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(apps.len(), usize::from(INSTANCES), "pm2 save: {apps:?}");
    assert!(
        apps.iter().all(|(_, cwd)| *cwd == "/"),
        "the saved instances run from the checkout, not /: {apps:?}"
    );
}

/// What nginx logs (at level error) when an instance it sends a request to
/// has stopped listening, or closes the kept-alive connection the request
/// went out on, as a stopping instance does: it then retries the request
/// on another instance (DEPLOY.md §3, step 9).
const NGINX_RETRY_REFUSED: &str =
    "connect() failed (111: Connection refused) while connecting to upstream";
const NGINX_RETRY_CLOSED: &str =
    "upstream prematurely closed connection while reading response header from upstream";

/// Before the uninstall: floodgate logged no warning or error; nginx's
/// error log holds only its retries of an instance that was restarting;
/// PM2 saw no unstable restart; no 5xx in nginx's access log.
fn logs_are_clean() {
    let mut floodgate_lines = 0;
    for i in 0..INSTANCES {
        let path = format!("/var/log/floodgate/floodgate-{i}.log");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_log_lines_clean(std::path::Path::new(&path));
        for line in text.lines() {
            floodgate_lines += 1;
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{path}: not a JSON line ({e}): {line}"));
            assert!(
                matches!(json["level"].as_str(), Some("INFO" | "DEBUG" | "TRACE")),
                "{path}: {line}"
            );
        }
    }
    let nginx = std::fs::read_to_string("/var/log/nginx/error.log").unwrap_or_default();
    let count = |what: &str| nginx.lines().filter(|l| l.contains(what)).count();
    let (refused, closed) = (count(NGINX_RETRY_REFUSED), count(NGINX_RETRY_CLOSED));
    let other: Vec<&str> = nginx
        .lines()
        .filter(|l| {
            ["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"]
                .iter()
                .any(|w| l.contains(w))
        })
        .filter(|l| !l.contains(NGINX_RETRY_REFUSED) && !l.contains(NGINX_RETRY_CLOSED))
        .collect();
    assert!(other.is_empty(), "nginx's error log: {other:#?}");
    let access = std::fs::read_to_string("/var/log/nginx/floodgate.access.log").unwrap_or_default();
    let server_errors: Vec<&str> = access
        .lines()
        .filter(|l| {
            l.split('"')
                .nth(2)
                .is_some_and(|s| s.trim_start().starts_with('5'))
        })
        .collect();
    assert!(
        server_errors.is_empty(),
        "5xx in nginx's access log: {server_errors:#?}"
    );
    let pm2 = std::fs::read_to_string("/root/.pm2/pm2.log").unwrap_or_default();
    assert!(
        !pm2.contains("too many unstable restarts") && !pm2.contains("errored"),
        "PM2's log: {pm2}"
    );
    eprintln!(
        "[deploy-walk] logs: {floodgate_lines} floodgate lines, none above INFO; nginx error log: {refused} \
         `connect() failed (111)` and {closed} `upstream prematurely closed` (retried) and nothing else; no 5xx in {} access log lines",
        access.lines().count()
    );
}

// ---------------------------------------------------------------------------
// Load through nginx while PM2 reloads.

/// Clients sending GETs through nginx until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Option<String>)>>,
}

/// What the load saw.
struct LoadSeen {
    /// 2xx or 429.
    answered: u64,
    /// Anything else: 5xx, another status, no answer.
    failed: u64,
    first_failure: Option<String>,
}

impl std::fmt::Display for LoadSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests answered (200 or 429), {} failed",
            self.answered, self.failed
        )?;
        if let Some(e) = &self.first_failure {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}

impl Load {
    /// 20 clients, each its own key and address, a request every 50 ms.
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let tasks = (0..20)
            .map(|i| {
                let (stop, answered) = (stop.clone(), answered.clone());
                rt.spawn(async move {
                    let http = Http::new();
                    let (key, ip) = (format!("walk-load-{i}"), format!("198.51.100.{}", 100 + i));
                    let (mut failed, mut first) = (0, None);
                    while !stop.load(Ordering::SeqCst) {
                        let headers = [
                            ("x-api-key", key.as_str()),
                            ("x-forwarded-for", ip.as_str()),
                        ];
                        match http
                            .send("GET", "http://127.0.0.1/api/load", &headers, None)
                            .await
                        {
                            Ok(r) if (200..300).contains(&r.status) || r.status == 429 => {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => {
                                failed += 1;
                                first.get_or_insert_with(|| format!("{} {}", r.status, r.text()));
                            }
                            Err(e) => {
                                failed += 1;
                                first.get_or_insert(e);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    (failed, first)
                })
            })
            .collect();
        // Under way before the reload starts.
        wait_for(WAIT, "the load to get answers", || {
            (answered.load(Ordering::SeqCst) >= 20).then_some(())
        });
        Load {
            stop,
            answered,
            tasks,
        }
    }

    fn stop(self, rt: &tokio::runtime::Runtime) -> LoadSeen {
        // A little more load after the reload returned: the last instance
        // has just started.
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::SeqCst);
        let mut seen = LoadSeen {
            answered: 0,
            failed: 0,
            first_failure: None,
        };
        for task in self.tasks {
            let (failed, first) = rt.block_on(task).unwrap();
            seen.failed += failed;
            if seen.first_failure.is_none() {
                seen.first_failure = first;
            }
        }
        seen.answered = self.answered.load(Ordering::SeqCst);
        seen
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

fn admin_ports() -> impl Iterator<Item = u16> {
    9091..9091 + INSTANCES
}

/// The token DEPLOY.md's step 4 generated.
fn admin_token() -> String {
    let env = std::fs::read_to_string("/etc/floodgate/floodgate.env").unwrap();
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("FLOODGATE_ADMIN_TOKEN="))
        .expect("FLOODGATE_ADMIN_TOKEN in /etc/floodgate/floodgate.env")
        .to_owned();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "the admin token is not 32 random bytes in hex: {token:?}"
    );
    token
}

/// `pm2 jlist` of root's PM2 (the walk's), instances online only.
fn online_instances() -> Vec<Pm2Process> {
    let out = Command::new("pm2")
        .arg("jlist")
        .env_clear()
        .envs(SHELL_ENV.iter().copied())
        .output()
        .expect("run pm2 jlist");
    let list = pm2::parse_jlist(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("pm2 jlist: {}", String::from_utf8_lossy(&out.stdout)));
    list.into_iter().filter(|p| p.online).collect()
}

/// The command line of every process in the walk's pid namespace but the
/// walk's own (the test binary, run with this test's name).
fn processes() -> Vec<String> {
    procfs::command_lines()
        .into_iter()
        .filter(|c| !c.contains(TEST_FN))
        .collect()
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
