//! A static-file server on loopback for `vidkv demo`: std's `TcpListener`, one short-lived
//! thread per connection (at most [`MAX_CONNECTIONS`] at a time; more get 503), read and write
//! timeouts, and one request per connection (`Connection: close`). tiny_http served the demo
//! before; its task pool could leave a new connection unserved behind idle keep-alive
//! sockets for five minutes (web/test.mjs's heartbeat caught two shader fetches open for
//! 300 s), which a plain thread per connection cannot do.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; a client that opens more gets 503.
pub(super) const MAX_CONNECTIONS: usize = 64;
/// The longest a request header may be.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a connection may take to send its request, or to take the response.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a request the demo looks at.
pub(super) struct Request {
    pub method: String,
    /// The request target, query string included.
    pub target: String,
    /// The `Host` header, when present.
    pub host: Option<String>,
}

/// A complete response.
pub(super) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub(super) fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        }
    }
}

/// Serves `listener` forever, answering each request with `answer`.
pub(super) fn serve(
    listener: TcpListener,
    answer: Arc<dyn Fn(&Request) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(TIMEOUT));
            let _ = write_response(
                &mut stream,
                &Response::text(503, "too many connections"),
                false,
            );
            continue;
        }
        let (active, answer) = (Arc::clone(&active), Arc::clone(&answer));
        std::thread::spawn(move || {
            handle(&mut stream, answer.as_ref());
            active.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}

/// Reads one request from `stream` and writes its answer (400 for a malformed request).
fn handle(stream: &mut TcpStream, answer: &(dyn Fn(&Request) -> Response + Send + Sync)) {
    if stream.set_read_timeout(Some(TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(TIMEOUT)).is_err()
    {
        return;
    }
    let response = match read_request(stream) {
        Some(request) => {
            let head_only = request.method == "HEAD";
            (answer(&request), head_only)
        }
        None => (Response::text(400, "bad request"), false),
    };
    let _ = write_response(stream, &response.0, response.1);
}

/// The request line and headers, up to the blank line (`None` when malformed, too long or
/// timed out).
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut header = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !header.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || header.len() + n > MAX_HEADER_BYTES {
            return None;
        }
        header.extend_from_slice(&buf[..n]);
    }
    let text = std::str::from_utf8(&header).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let host = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_string());
    Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        host,
    })
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    stream.write_all(out.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}
