//! A real nginx: in front of the tests' floodgate instances, as
//! deploy/nginx.conf puts it ([`Nginx::start_deployed`]), or serving a
//! `server` block of the test's making, for tests that need to know what
//! nginx does with a request ([`Nginx::start`]). On a free port, with its
//! configuration, pid file, logs and temporary files in a directory;
//! stopped, with every process it started, on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::host::{self, find_program, free_addr, repo_root};
use super::process::ProcessGroup;

/// nginx: `FLOODGATE_TEST_NGINX`, else on `PATH`, else `/usr/sbin/nginx`;
/// a clear failure when there is none.
pub(crate) fn binary() -> PathBuf {
    find_program("FLOODGATE_TEST_NGINX", "nginx", &["/usr/sbin/nginx"]).unwrap_or_else(|| {
        panic!(
            "nginx is not installed, and this test runs floodgate with a real nginx: \
             run scripts/test.sh (it installs it), `apt-get install nginx`, \
             or set FLOODGATE_TEST_NGINX=/path/to/nginx"
        )
    })
}

/// A running nginx.
pub(crate) struct Nginx {
    pub(crate) addr: SocketAddr,
    /// Its configuration, logs and temporary files.
    dir: PathBuf,
    process: ProcessGroup,
    /// The directory, when it is nginx's own rather than the test's.
    _own_dir: Option<TempDir>,
}

impl Nginx {
    /// One process (`master_process off`) with `server { listen <free
    /// port>; <server_body> }`, its files in a directory of its own.
    pub(crate) fn start(server_body: &str) -> Self {
        let own_dir = host::temp_dir("nginx");
        let addr = free_addr();
        let d = own_dir.path().display();
        let mut nginx = Self::launch(
            own_dir.path(),
            addr,
            "master_process off;\nevents { worker_connections 256; }",
            &format!(
                "access_log {d}/access.log;\n\
                 default_type text/plain;\n\
                 server {{\n    listen {addr};\n    {server_body}\n  }}"
            ),
        );
        nginx._own_dir = Some(own_dir);
        nginx
    }

    /// One worker with deploy/nginx.conf as its site, sending to
    /// `backends`; its files in `dir` (the test's, so that they outlive
    /// nginx for the test's failure report).
    pub(crate) fn start_deployed(dir: &Path, backends: &[SocketAddr]) -> Self {
        let addr = free_addr();
        std::fs::create_dir_all(dir).unwrap();
        let template = std::fs::read_to_string(repo_root().join("deploy/nginx.conf")).unwrap();
        std::fs::write(
            dir.join("floodgate.conf"),
            site_config(&template, backends, addr, dir),
        )
        .unwrap();
        let nginx = Self::launch(
            dir,
            addr,
            "worker_processes 1;\nevents { worker_connections 1024; }",
            &format!("include {}/floodgate.conf;", dir.display()),
        );
        eprintln!("[nginx] on {addr} -> {backends:?}");
        nginx
    }

    /// Writes nginx.conf (`main` at the top, `http` in the `http` block,
    /// after the temporary paths), starts nginx and waits until it listens
    /// on `addr`.
    fn launch(dir: &Path, addr: SocketAddr, main: &str, http: &str) -> Self {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        let conf_path = dir.join("nginx.conf");
        std::fs::write(
            &conf_path,
            format!(
                "daemon off;\n{main}\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 http {{\n\
                 \x20 client_body_temp_path {d}/tmp/body;\n\
                 \x20 proxy_temp_path {d}/tmp/proxy;\n\
                 \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n\
                 \x20 uwsgi_temp_path {d}/tmp/uwsgi;\n\
                 \x20 scgi_temp_path {d}/tmp/scgi;\n\
                 \x20 {http}\n\
                 }}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let mut nginx = Nginx {
            addr,
            dir: dir.to_owned(),
            process: ProcessGroup::spawn(cmd, &dir.join("stderr.log")),
            _own_dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                nginx.process.running(),
                "nginx exited at start:\n{}",
                nginx.logs()
            );
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr} within 30 s:\n{}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its error log.
    pub(crate) fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Its stderr and error log.
    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

/// deploy/nginx.conf with the test's addresses: its `server 127.0.0.1:...`
/// lines become one per backend (same parameters), its `listen` lines one on
/// `listen`, and its access log goes to `dir`.
fn site_config(template: &str, backends: &[SocketAddr], listen: SocketAddr, dir: &Path) -> String {
    let (mut servers, mut listens) = (false, false);
    let mut out = Vec::new();
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("server 127.0.0.1:") {
            if !servers {
                let params = t.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
                for b in backends {
                    out.push(format!("    server {b} {params}"));
                }
                servers = true;
            }
        } else if t.starts_with("listen ") {
            if !listens {
                out.push(format!("    listen {listen};"));
                listens = true;
            }
        } else if t.starts_with("access_log ") {
            out.push(format!("    access_log {}/access.log;", dir.display()));
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(
        servers && listens,
        "deploy/nginx.conf has no `server 127.0.0.1:PORT ...;` or no `listen ...;` line for the test to replace"
    );
    out.join("\n")
}
