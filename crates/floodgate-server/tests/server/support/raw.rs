//! One HTTP/1.1 connection written to byte by byte ([`RawConn`]), and the
//! answers read off it ([`RawReply`]).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP/1.1 connection written to byte by byte, for requests no client
/// library would send (non-UTF-8 header values) and for proving that one
/// keep-alive connection survives something.
pub(crate) struct RawConn {
    stream: TcpStream,
    /// Bytes read past the end of the last response.
    pending: Vec<u8>,
}

/// A response read off a [`RawConn`].
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) status: u16,
    /// Lower-case names.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl RawReply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawConn {
    pub(crate) fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap()
    }

    /// [`RawConn::connect`], the failure returned.
    pub(crate) fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        Self::with_timeouts(TcpStream::connect(addr)?)
    }

    /// [`RawConn::connect`] from the local address `from` (another
    /// loopback address than 127.0.0.1: a client a proxy sees apart).
    pub(crate) fn connect_from(from: IpAddr, to: SocketAddr) -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        socket.connect(&to.into()).unwrap();
        Self::with_timeouts(socket.into()).unwrap()
    }

    fn with_timeouts(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawConn {
            stream,
            pending: Vec::new(),
        })
    }

    /// Bounds how long a read waits (10 s from `connect`).
    pub(crate) fn set_read_timeout(&self, within: Duration) {
        self.stream.set_read_timeout(Some(within)).unwrap();
    }

    /// Writes `request` as is and reads one response; `Err` when the server
    /// closed the connection (or timed out) instead of answering.
    pub(crate) fn roundtrip(&mut self, request: &[u8]) -> Result<RawReply, String> {
        self.stream
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        self.read_response()
    }

    /// `GET path` with the given extra header lines, keeping the connection open.
    pub(crate) fn get(&mut self, path: &str, extra: &[&str]) -> Result<RawReply, String> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for line in extra {
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.roundtrip(req.as_bytes())
    }

    /// Writes every request at once (HTTP/1.1 pipelining, from a second
    /// thread so neither side's buffers can fill up and stall the other)
    /// and reads one response per request, in order.
    pub(crate) fn pipeline(&mut self, requests: Vec<Vec<u8>>) -> Result<Vec<RawReply>, String> {
        let n = requests.len();
        let mut writer = self.stream.try_clone().map_err(|e| e.to_string())?;
        let writing = std::thread::spawn(move || -> std::io::Result<()> {
            let mut batch = Vec::with_capacity(64 * 1024);
            for request in requests {
                batch.extend_from_slice(&request);
                if batch.len() >= 32 * 1024 {
                    writer.write_all(&batch)?;
                    batch.clear();
                }
            }
            writer.write_all(&batch)
        });
        let replies = (0..n)
            .map(|_| self.read_response())
            .collect::<Result<Vec<_>, _>>();
        writing
            .join()
            .map_err(|_| "the writer thread panicked".to_owned())?
            .map_err(|e| format!("write: {e}"))?;
        replies
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut buf)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.pending.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Reads one response to a request written before.
    pub(crate) fn read_reply(&mut self) -> Result<RawReply, String> {
        self.read_response()
    }

    fn read_response(&mut self) -> Result<RawReply, String> {
        let head_end = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        self.pending.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| "bad content-length")?;
            while self.pending.len() < len {
                self.fill()?;
            }
            self.pending.drain(..len).collect()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.pending, b"\r\n") {
                        break i;
                    }
                    self.fill()?;
                };
                let size_text = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                self.pending.drain(..line_end + 2);
                while self.pending.len() < size + 2 {
                    self.fill()?;
                }
                body.extend(self.pending.drain(..size));
                self.pending.drain(..2);
                if size == 0 {
                    break body;
                }
            }
        } else if status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else {
            // Delimited by the end of the connection.
            loop {
                if self.fill().is_err() {
                    break std::mem::take(&mut self.pending);
                }
            }
        };
        Ok(RawReply {
            status,
            headers,
            body,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
