//! A deliberately small HTTP/1.1 client: each [`Client::request`] opens a fresh connection
//! (so the kernel or the primary picks a worker anew), and [`Conn`] keeps one alive.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// `name=value` of the first `Set-Cookie`, if any.
    pub fn cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        Some(set.split(';').next()?.trim().to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    source: Option<IpAddr>,
    /// Read and write timeout of its connections.
    timeout: Duration,
    /// Sent as `Cookie:` with every request when set.
    pub cookie: Option<String>,
    /// Bytes written first on every connection (a PROXY protocol header, see [`crate::proxy`]).
    preamble: Option<Vec<u8>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, source: None, cookie: None, timeout: IO_TIMEOUT, preamble: None }
    }

    /// Give up reading or writing after `timeout` instead of the default 30 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Start every connection with these bytes, as a balancer that sends a PROXY header does.
    pub fn with_preamble(mut self, preamble: Vec<u8>) -> Self {
        self.preamble = Some(preamble);
        self
    }

    /// Connect from this local address (any of 127.0.0.0/8 works on Linux).
    pub fn from_ip(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &str) -> std::io::Result<Response> {
        self.request("POST", path, &[("Content-Type", "application/json")], body.as_bytes())
    }

    /// Logs in as alice (the demo user every test cluster has) and keeps the cookie.
    pub fn login(&mut self) -> Response {
        let res = self.try_login();
        assert_eq!(res.status, 200, "login failed: {}", res.body);
        res
    }

    /// Asks to log in as alice; keeps the cookie if that succeeded, and returns the answer
    /// whatever it is (a 503 while Redis fails over, say).
    pub fn try_login(&mut self) -> Response {
        let res = self.post_json("/login", r#"{"username":"alice","password":"wonderland"}"#).expect("login request");
        if res.status == 200 {
            self.cookie = Some(res.cookie().expect("login sets a cookie"));
        }
        res
    }

    /// One request on a new connection, closed after the response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut conn = self.connect()?;
        conn.send(method, path, headers, body, self.cookie.as_deref(), true)
    }

    /// A connection to keep alive across requests.
    pub fn connect(&self) -> std::io::Result<Conn> {
        let stream = match self.source {
            None => TcpStream::connect(self.addr)?,
            Some(ip) => {
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                socket.connect(&self.addr.into())?;
                socket.into()
            }
        };
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        if let Some(preamble) = &self.preamble {
            (&stream).write_all(preamble)?;
        }
        Ok(Conn { reader: BufReader::new(stream) })
    }
}

pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn get(&mut self, path: &str, cookie: Option<&str>) -> std::io::Result<Response> {
        self.send("GET", path, &[], b"", cookie, false)
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        cookie: Option<&str>,
        close: bool,
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: herd.test\r\nContent-Length: {}\r\n", body.len());
        if close {
            head.push_str("Connection: close\r\n");
        }
        if let Some(cookie) = cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        self.read_response()
    }

    fn read_response(&mut self) -> std::io::Result<Response> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        let status =
            status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status line"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').ok_or_else(|| bad("header line"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(|| bad("no content-length"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}
