//! A real nginx for tests that need to know what nginx does with a request:
//! one process (`master_process off`), one `server` block of the test's
//! making, on a free port, with its files in a temporary directory; killed
//! on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_addr;
use super::tempdir::Dir;

/// nginx: `FLOODGATE_TEST_NGINX`, else on `PATH`, else `/usr/sbin/nginx`;
/// a clear failure when there is none.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOODGATE_TEST_NGINX").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, and this test checks floodgate against a real nginx: \
                 run scripts/test.sh (it installs it), `apt-get install nginx`, \
                 or set FLOODGATE_TEST_NGINX=/path/to/nginx"
            )
        })
}

/// A running nginx serving one `server` block.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: Dir,
}

impl Nginx {
    /// nginx with `server { listen <free port>; <server_body> }`.
    pub fn start(server_body: &str) -> Self {
        let dir = Dir::new("nginx");
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let addr = free_addr();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20 access_log {d}/access.log;\n\
             \x20 client_body_temp_path {d}/tmp/body;\n\
             \x20 proxy_temp_path {d}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20 uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {d}/tmp/scgi;\n\
             \x20 default_type text/plain;\n\
             \x20 server {{\n    listen {addr};\n    {server_body}\n  }}\n\
             }}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited at start ({status}):\n{}", nginx.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr} within 30 s:\n{}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its stderr and error log.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
