//! Reading one PROXY header off a socket, exactly its bytes.

use std::net::SocketAddr;

use ppp::v2;
use tokio::{io::AsyncReadExt, net::TcpStream};

use super::MAX_V2_HEADER;

/// The v2 signature: the first 12 bytes of every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: the signature, version and command, family and protocol,
/// and the big-endian length of what follows.
const V2_FIXED: usize = 16;
/// The longest v1 header the protocol allows, CRLF included.
const V1_MAX: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): this many bytes can be read
/// at once without ever reading past a header.
const SHORTEST: usize = 15;

/// Why a connection was closed instead of served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejected {
    /// It does not come from `--trusted-proxies`: anyone else could name any client.
    #[error("the connection is not from --trusted-proxies, so its PROXY header cannot be believed")]
    Untrusted,
    /// The whole header did not arrive within `--proxy-header-timeout`.
    #[error("no complete PROXY header within --proxy-header-timeout")]
    Slow,
    /// The peer closed the connection within the header.
    #[error("the connection ended inside its PROXY header")]
    Truncated,
    /// Not a PROXY header, or a broken one.
    #[error("not a valid PROXY header: {0}")]
    Malformed(String),
    /// The socket failed (reset by the peer, for one).
    #[error("reading the PROXY header failed: {0}")]
    Io(std::io::Error),
}

impl Rejected {
    /// Every [`Rejected::reason`].
    pub(crate) const REASONS: [&'static str; 5] = ["untrusted", "timeout", "truncated", "malformed", "io"];

    /// A short name for metrics and logs.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejected::Untrusted => "untrusted",
            Rejected::Slow => "timeout",
            Rejected::Truncated => "truncated",
            Rejected::Malformed(_) => "malformed",
            Rejected::Io(_) => "io",
        }
    }

    fn from_io(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            Rejected::Truncated
        } else {
            Rejected::Io(err)
        }
    }
}

/// Reads the PROXY header at the start of `stream`, leaving the stream at the first byte after
/// it. `Ok(Some(client))`: the header names the client; `Ok(None)`: it names none (v2 `LOCAL`,
/// as health checks send, v1 `UNKNOWN`, or an address family other than IP), so the socket's
/// own peer stands. Has no timeout of its own: the caller bounds it.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Rejected> {
    let mut header = vec![0u8; SHORTEST];
    stream.read_exact(&mut header).await.map_err(Rejected::from_io)?;
    if header.starts_with(V2_SIGNATURE) {
        read_v2(stream, header).await
    } else if header.starts_with(b"PROXY ") {
        read_v1(stream, header).await
    } else {
        Err(Rejected::Malformed("it starts with neither the v1 \"PROXY \" nor the v2 signature".to_owned()))
    }
}

async fn read_v2(stream: &mut TcpStream, mut header: Vec<u8>) -> Result<Option<SocketAddr>, Rejected> {
    header.resize(V2_FIXED, 0);
    stream.read_exact(&mut header[SHORTEST..]).await.map_err(Rejected::from_io)?;
    let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if V2_FIXED + rest > MAX_V2_HEADER {
        return Err(Rejected::Malformed(format!(
            "a v2 header of {} bytes, more than the {MAX_V2_HEADER} accepted",
            V2_FIXED + rest
        )));
    }
    header.resize(V2_FIXED + rest, 0);
    stream.read_exact(&mut header[V2_FIXED..]).await.map_err(Rejected::from_io)?;
    let parsed = v2::Header::try_from(header.as_slice()).map_err(|err| Rejected::Malformed(err.to_string()))?;
    if parsed.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

/// A v1 header ends at its CRLF, wherever that is. What is already in the socket is peeked at,
/// and only the part up to the first `\n` taken; without one it is all header, taken whole,
/// and the next peek waits for more.
async fn read_v1(stream: &mut TcpStream, mut header: Vec<u8>) -> Result<Option<SocketAddr>, Rejected> {
    let mut peeked = [0u8; V1_MAX];
    while !header.ends_with(b"\n") {
        let room = V1_MAX - header.len();
        if room == 0 {
            return Err(Rejected::Malformed(format!("a v1 header longer than {V1_MAX} bytes")));
        }
        let seen = stream.peek(&mut peeked[..room]).await.map_err(Rejected::from_io)?;
        if seen == 0 {
            return Err(Rejected::Truncated);
        }
        let take = peeked[..seen].iter().position(|&b| b == b'\n').map_or(seen, |at| at + 1);
        let start = header.len();
        header.resize(start + take, 0);
        // The bytes were peeked, so they are there: this returns at once.
        stream.read_exact(&mut header[start..]).await.map_err(Rejected::from_io)?;
    }
    let parsed = ppp::v1::Header::try_from(header.as_slice()).map_err(|err| Rejected::Malformed(err.to_string()))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    /// A connected pair: what the client writes, and the server's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// Sends `chunks` one after another (with a pause, so they arrive apart), then `after`, and
    /// returns what `read_header` made of it and the bytes left on the stream.
    async fn read(chunks: &[&[u8]], after: &[u8]) -> (Result<Option<SocketAddr>, Rejected>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let after = after.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            client.write_all(&after).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let result = read_header(&mut server).await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        writer.await.expect("writer");
        (result, rest)
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).expect("short");
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    #[tokio::test]
    async fn a_v1_header_names_the_client_and_leaves_the_request() {
        let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n";
        let (result, rest) = read(&[header], REQUEST).await;
        assert_eq!(result.expect("parsed"), Some("203.0.113.7:51234".parse().expect("literal")));
        assert_eq!(rest, REQUEST, "not one byte of the request was read");
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n";
        let (result, rest) = read(&[v6], REQUEST).await;
        assert_eq!(result.expect("parsed"), Some("[2001:db8::7]:40000".parse().expect("literal")));
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn a_v1_header_in_pieces_is_put_together() {
        let (result, rest) = read(&[b"PROXY TCP4 203.0", b".113.7 127.0.0.1 5", b"1234 80\r", b"\n"], REQUEST).await;
        assert_eq!(result.expect("parsed"), Some("203.0.113.7:51234".parse().expect("literal")));
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn the_shortest_v1_header_keeps_the_socket_address() {
        let (result, rest) = read(&[b"PROXY UNKNOWN\r\n"], REQUEST).await;
        assert_eq!(result.expect("parsed"), None);
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_leaves_the_request() {
        let v4 = [[203, 0, 113, 7], [127, 0, 0, 1]].concat();
        let ports = [51234u16.to_be_bytes(), 80u16.to_be_bytes()].concat();
        // A NOOP TLV (type 4) of 3 bytes, as balancers may pad with.
        let header = v2(1, 0x11, &[v4, ports].concat(), &[4, 0, 3, 0, 0, 0]);
        let (result, rest) = read(&[&header[..5], &header[5..17], &header[17..]], REQUEST).await;
        assert_eq!(result.expect("parsed"), Some("203.0.113.7:51234".parse().expect("literal")));
        assert_eq!(rest, REQUEST);

        let source: std::net::Ipv6Addr = "2001:db8::7".parse().expect("literal");
        let v6 = [&source.octets()[..], &std::net::Ipv6Addr::LOCALHOST.octets()[..], &[0x9c, 0x40, 0, 80]].concat();
        let (result, _) = read(&[&v2(1, 0x21, &v6, &[])], REQUEST).await;
        assert_eq!(result.expect("parsed"), Some("[2001:db8::7]:40000".parse().expect("literal")));
    }

    #[tokio::test]
    async fn a_v2_local_command_keeps_the_socket_address() {
        let (result, rest) = read(&[&v2(0, 0x00, &[], &[])], REQUEST).await;
        assert_eq!(result.expect("parsed"), None, "a health check names no client");
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn garbage_truncation_and_oversize_are_refused() {
        let (result, _) = read(&[REQUEST], b"").await;
        assert!(matches!(result, Err(Rejected::Malformed(_))), "{result:?}");
        let (result, _) = read(&[b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2"], b"").await;
        assert!(matches!(result, Err(Rejected::Truncated)), "{result:?}");
        let (result, _) = read(&[b"PROXY"], b"").await;
        assert!(matches!(result, Err(Rejected::Truncated)), "{result:?}");
        let (result, _) = read(&[b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n"], b"").await;
        assert!(matches!(result, Err(Rejected::Malformed(_))), "{result:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (result, _) = read(&[long.as_bytes()], b"").await;
        assert!(matches!(result, Err(Rejected::Malformed(ref m)) if m.contains("107")), "{result:?}");
        let mut huge = v2(1, 0x11, &[], &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let (result, _) = read(&[&huge], b"").await;
        assert!(matches!(result, Err(Rejected::Malformed(ref m)) if m.contains("4096")), "{result:?}");
        let (result, _) = read(&[&v2(1, 0x11, &[1, 2, 3], &[])], b"").await;
        assert!(matches!(result, Err(Rejected::Malformed(_))), "addresses shorter than IPv4's: {result:?}");
        let mut cut = v2(1, 0x11, &[0; 12], &[]);
        cut.truncate(20);
        let (result, _) = read(&[&cut], b"").await;
        assert!(matches!(result, Err(Rejected::Truncated)), "{result:?}");
    }
}
