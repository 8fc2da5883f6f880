//! One HTTP/1.1 connection written to byte by byte ([`RawConn`]), and the
//! answers read off it ([`RawReply`]): heads and chunk sizes parsed by
//! `httparse` (hyper's parser), bodies framed here as the test needs to see
//! them (by length, chunked, or to the close).

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

/// Header names (in lower case) and values, in the order received.
type Headers = Vec<(String, String)>;

/// A response read off a [`RawConn`].
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) status: u16,
    pub(crate) headers: Headers,
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
        let n = loop {
            match self.stream.read(&mut buf) {
                Ok(n) => break n,
                // A signal delivered to this thread (the tests signal the
                // processes they start): nothing was read, read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        };
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
        let (status, headers) = loop {
            if let Some(head) = self.parse_head()? {
                break head;
            }
            self.fill()?;
        };
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
                let (line_len, size) = loop {
                    match httparse::parse_chunk_size(&self.pending) {
                        Ok(httparse::Status::Complete((len, size))) => break (len, size),
                        Ok(httparse::Status::Partial) => self.fill()?,
                        Err(e) => return Err(format!("bad chunk size line: {e}")),
                    }
                };
                let size = usize::try_from(size).map_err(|_| "a chunk too large")?;
                self.pending.drain(..line_len);
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

    /// The status and headers (names in lower case) of the response head
    /// at the start of what was read, taken off it; `None` while the head
    /// is incomplete.
    fn parse_head(&mut self) -> Result<Option<(u16, Headers)>, String> {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut slots);
        let len = match head.parse(&self.pending) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                let start = &self.pending[..self.pending.len().min(200)];
                return Err(format!(
                    "bad response head ({e}): {:?}",
                    String::from_utf8_lossy(start)
                ));
            }
        };
        let status = head.code.ok_or("no status code")?;
        let headers = head
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        self.pending.drain(..len);
        Ok(Some((status, headers)))
    }
}
