//! A measurement aid, not a proxy: the least a Rust HTTP/1 proxy on tokio can do per request,
//! to learn how far below hyper a hand-written codec could take ficus on a given machine.
//!
//! `cargo run --release --example raw_ceiling -- LISTEN UPSTREAM` forwards keep-alive GETs
//! without bodies from LISTEN to UPSTREAM: it parses the request head with httparse, copies
//! its headers except `Connection` and adds `X-Forwarded-For`, sends it on the client
//! connection's own upstream connection, parses the answer's head, reads a
//! `Content-Length` body and writes the answer back as received. No routing, pooling
//! across clients, timeouts, chunked bodies or metrics: anything else gets a 501 and the
//! connection is closed. One thread, like `ficus --threads 1`. See README, "Performance".

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEADERS: usize = 32;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: raw_ceiling LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().map_err(io::Error::other)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (client, peer) = listener.accept().await?;
                tokio::spawn(async move {
                    let _ = serve(client, peer, upstream).await;
                });
            }
        })
}

/// Bytes of `buf[..len]` up to the end of the first head, if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads into `buf` until it holds a whole head; returns its length (0: closed cleanly).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(end);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("head too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(0)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

async fn serve(mut client: TcpStream, peer: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let forwarded_for = peer.ip().to_string();
    let mut upstream_conn: Option<TcpStream> = None;
    let mut from_client = Vec::with_capacity(4096);
    let mut to_upstream = Vec::with_capacity(4096);
    let mut from_upstream = Vec::with_capacity(8192);
    loop {
        let end = read_head(&mut client, &mut from_client).await?;
        if end == 0 {
            return Ok(());
        }
        to_upstream.clear();
        {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let parsed = request
                .parse(&from_client[..end])
                .map_err(io::Error::other)?;
            let has_body = request.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            });
            if !parsed.is_complete() || has_body {
                client
                    .write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await?;
                return Ok(());
            }
            to_upstream.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
            to_upstream.push(b' ');
            to_upstream.extend_from_slice(request.path.unwrap_or("/").as_bytes());
            to_upstream.extend_from_slice(b" HTTP/1.1\r\n");
            for header in request.headers.iter() {
                if header.name.eq_ignore_ascii_case("connection") {
                    continue;
                }
                to_upstream.extend_from_slice(header.name.as_bytes());
                to_upstream.extend_from_slice(b": ");
                to_upstream.extend_from_slice(header.value);
                to_upstream.extend_from_slice(b"\r\n");
            }
            to_upstream.extend_from_slice(b"x-forwarded-for: ");
            to_upstream.extend_from_slice(forwarded_for.as_bytes());
            to_upstream.extend_from_slice(b"\r\n\r\n");
        }
        from_client.drain(..end);

        let conn = match &mut upstream_conn {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(upstream).await?;
                conn.set_nodelay(true)?;
                upstream_conn.insert(conn)
            }
        };
        conn.write_all(&to_upstream).await?;
        from_upstream.clear();
        let end = read_head(conn, &mut from_upstream).await?;
        let length = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&from_upstream[..end])
                .map_err(io::Error::other)?;
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| io::Error::other("no content-length"))?
        };
        while from_upstream.len() < end + length {
            if conn.read_buf(&mut from_upstream).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        client.write_all(&from_upstream[..end + length]).await?;
    }
}
