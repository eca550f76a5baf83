//! A fault-injecting HTTP/1.1 proxy for integration tests: listens on 127.0.0.1,
//! forwards to a real server (s3s-fs) and, per request, does what a rule says:
//! forward, answer with a raw response (at once, or trickled a byte at a time), reset
//! the connection after some bytes of the request, stall, or close. Requests are parsed only as far as needed (request line,
//! headers, `Content-Length` body; narpush never sends chunked bodies), and every
//! request seen is logged for the test to count.
//!
//! Bounded: one thread per connection, every socket has a short read timeout so
//! threads notice `Drop` (stalled connections are released then, or after
//! `MAX_STALL`), and nothing listens beyond 127.0.0.1. No sleeps: the proxy waits
//! for what the client does (closes, sends more), and tests wait on a condition
//! variable for what the proxy saw ([`Proxy::wait_for`]), each with a deadline.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a stalled connection is held.
pub const MAX_STALL: Duration = Duration::from_secs(120);
/// How often a blocked socket read wakes up to see whether the proxy is stopping.
const POLL: Duration = Duration::from_millis(100);
/// The longest the proxy waits for a client to take an answer or send more.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Req {
    /// 0-based, in arrival order across all connections.
    pub index: usize,
    /// 0-based connection number.
    pub conn: usize,
    pub method: String,
    /// Path and query as sent (`/bucket/key?uploadId=…`).
    pub target: String,
    pub content_length: u64,
    /// The raw request head (request line and headers), for secret checks.
    pub head: String,
    /// When its head had arrived.
    pub at: Instant,
}

impl Req {
    pub fn is_complete_multipart(&self) -> bool {
        self.method == "POST" && self.target.contains("uploadId=")
    }
    pub fn is_upload_part(&self) -> bool {
        self.method == "PUT" && self.target.contains("partNumber=")
    }
    pub fn is_nar(&self) -> bool {
        self.target.contains("/nar/")
    }
    /// The header names its Authorization header says are signed (none if unsigned).
    pub fn signed_headers(&self) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .filter_map(|(_, v)| v.split("SignedHeaders=").nth(1))
            .flat_map(|v| v.split(',').next().unwrap_or("").split(';'))
            .map(|h| h.trim().to_string())
            .collect()
    }
}

/// Panics unless every request signs only what must be signed: `host`, `x-amz-*`,
/// `content-type` and `content-md5` (never a header a CDN may rewrite).
pub fn assert_signs_only_what_it_must(reqs: &[Req]) {
    for r in reqs {
        let signed = r.signed_headers();
        assert!(signed.iter().any(|h| h == "host"), "unsigned: {}", r.head);
        for h in &signed {
            assert!(
                matches!(h.as_str(), "host" | "content-type" | "content-md5")
                    || h.starts_with("x-amz-"),
                "{} {} signs {h}",
                r.method,
                r.target
            );
        }
    }
}

/// What to do with one request.
#[derive(Clone, Debug)]
pub enum Action {
    Forward,
    /// Answer with these bytes (a whole HTTP response) and close the connection.
    Respond(String),
    /// Forward the head and this many body bytes, then stop reading and close: the
    /// unread data makes the kernel send a RST.
    ResetAfter(u64),
    /// Forward nothing, never answer: read and discard until the client goes away,
    /// the proxy is dropped or `MAX_STALL` passes.
    Stall,
    /// Close without an answer as soon as the head is read.
    Close,
    /// Answer with these bytes one at a time, each after the given pause (a server
    /// that never stalls long enough for a read timeout, yet never finishes), then
    /// close; stops early when the client goes away.
    Trickle(String, Duration),
    /// As `Trickle`, but the first `usize` bytes (the head, say) go at once.
    TrickleFrom(String, usize, Duration),
}

pub type Rule = dyn Fn(&Req) -> Action + Send + Sync;

/// What the proxy has seen, behind one lock so a test can wait for it to change.
#[derive(Default)]
pub struct Seen {
    pub requests: Vec<Req>,
    /// Requests stalled so far.
    pub stalled: usize,
    /// Stalled requests the client gave up on (closed its connection), rather than
    /// being released when the proxy stopped or after `MAX_STALL`: a count that
    /// says the client's own timeout fired, however loaded the machine.
    pub stalls_closed_by_client: usize,
    /// Trickled answers that have ended, and how many of their bytes were sent:
    /// fewer than the whole answer says the client gave up first.
    pub trickles_ended: usize,
    pub trickled_bytes: usize,
}

struct Shared {
    upstream: u16,
    rule: Box<Rule>,
    seen: Mutex<Seen>,
    /// Notified whenever `seen` changes.
    changed: Condvar,
    stop: AtomicBool,
    next_conn: AtomicUsize,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Proxy 127.0.0.1:`upstream` with `rule`.
    pub fn start(upstream: u16, rule: impl Fn(&Req) -> Action + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            rule: Box::new(rule),
            seen: Mutex::new(Seen::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            next_conn: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || {
                    let n = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(&sh, conn, n);
                });
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Req> {
        self.shared.seen.lock().unwrap().requests.clone()
    }

    /// Read what the proxy has seen.
    pub fn with_seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.shared.seen.lock().unwrap())
    }

    /// How many requests are being stalled right now (or were).
    pub fn stalled(&self) -> usize {
        self.shared.seen.lock().unwrap().stalled
    }

    /// Wait until `cond` holds for what the proxy has seen, woken by each change;
    /// false if `timeout` passes first.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Seen) -> bool) -> bool {
        let seen = self.shared.seen.lock().unwrap();
        let (seen, _) = self
            .shared
            .changed
            .wait_timeout_while(seen, timeout, |s| !cond(s))
            .unwrap();
        cond(&seen)
    }

    /// `s3://BUCKET?endpoint=127.0.0.1:PORT&scheme=http` plus `extra` (`&k=v…`).
    pub fn url(&self, bucket: &str, extra: &str) -> String {
        format!(
            "s3://{bucket}?endpoint=127.0.0.1:{}&scheme=http{extra}",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A port nothing listens on (bound a moment ago, then released).
pub fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A whole HTTP response with `Connection: close`.
pub fn http_response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        r += &format!("{k}: {v}\r\n");
    }
    r += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    r
}

/// An S3 XML error response.
pub fn s3_error(status: u16, reason: &str, code: &str, extra: &[(&str, &str)]) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    let mut h = vec![("Content-Type", "application/xml")];
    h.extend_from_slice(extra);
    http_response(status, reason, &h, &body)
}

/// Read from `s` until the end of an HTTP head; `None` on a clean EOF before any byte.
fn read_head(sh: &Shared, s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let started = Instant::now();
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if sh.stop.load(Ordering::SeqCst) || started.elapsed() > MAX_STALL {
            return Err(io::Error::other("proxy stopping"));
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write `bytes` one at a time, `pause` apart, until done, stopped, or the client
/// goes; the bytes sent.
fn trickle(sh: &Shared, client: &mut TcpStream, bytes: &[u8], pause: Duration) -> usize {
    for (sent, b) in bytes.iter().enumerate() {
        if sh.stop.load(Ordering::SeqCst) || client.write_all(&[*b]).is_err() {
            return sent;
        }
        // The one sleep in the proxy: trickling is a matter of time.
        std::thread::sleep(pause);
    }
    bytes.len()
}

/// Note a trickled answer that ended after `sent` bytes.
fn trickle_ended(sh: &Shared, sent: usize) {
    let mut seen = sh.seen.lock().unwrap();
    seen.trickles_ended += 1;
    seen.trickled_bytes += sent;
    sh.changed.notify_all();
}

/// Read and discard until the client closes (or fails), the proxy stops or `limit`
/// passes; true when the client closed (or failed).
fn until_closed(sh: &Shared, client: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    let mut chunk = [0u8; 64 * 1024];
    while !sh.stop.load(Ordering::SeqCst) && start.elapsed() < limit {
        match client.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Wait until the client has bytes waiting to be read (or has closed, or failed),
/// the proxy stops or [`CLIENT_WAIT`] passes; reads nothing.
fn until_readable(sh: &Shared, client: &TcpStream) {
    let start = Instant::now();
    let mut probe = [0u8; 1];
    while !sh.stop.load(Ordering::SeqCst) && start.elapsed() < CLIENT_WAIT {
        match client.peek(&mut probe) {
            Err(e) if is_timeout(&e) => {}
            _ => return,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Relay the upstream's answers to the client until either side closes.
fn pump(sh: Arc<Shared>, mut from: TcpStream, mut to: TcpStream) {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(sh: &Arc<Shared>, mut client: TcpStream, conn: usize) -> io::Result<()> {
    client.set_read_timeout(Some(POLL))?;
    let mut upstream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(head_len) = read_head(sh, &mut client, &mut buf)? else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let content_length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0u64);
        let req = {
            let mut seen = sh.seen.lock().unwrap();
            let r = Req {
                index: seen.requests.len(),
                conn,
                method,
                target,
                content_length,
                head: head.clone(),
                at: Instant::now(),
            };
            seen.requests.push(r.clone());
            sh.changed.notify_all();
            r
        };
        let action = (sh.rule)(&req);
        match action {
            Action::Trickle(raw, pause) => {
                let sent = trickle(sh, &mut client, raw.as_bytes(), pause);
                trickle_ended(sh, sent);
                return Ok(());
            }
            Action::TrickleFrom(raw, at_once, pause) => {
                let (head, rest) = raw.as_bytes().split_at(at_once.min(raw.len()));
                let sent = if client.write_all(head).is_ok() {
                    head.len() + trickle(sh, &mut client, rest, pause)
                } else {
                    0
                };
                trickle_ended(sh, sent);
                return Ok(());
            }
            Action::Respond(raw) => {
                // Drain the body so the client is not reset before it reads the answer.
                let mut have = (buf.len() - head_len) as u64;
                let start = Instant::now();
                while have < content_length && start.elapsed() < Duration::from_secs(10) {
                    let mut chunk = [0u8; 64 * 1024];
                    match client.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => have += n as u64,
                        Err(e) if is_timeout(&e) => continue,
                        Err(_) => break,
                    }
                }
                let _ = client.write_all(raw.as_bytes());
                let _ = client.shutdown(Shutdown::Write);
                // Keep the socket until the client has read the answer and closed
                // its side (closing first could reset the answer away).
                until_closed(sh, &mut client, CLIENT_WAIT);
                return Ok(());
            }
            Action::Close => return Ok(()),
            Action::Stall => {
                sh.seen.lock().unwrap().stalled += 1;
                sh.changed.notify_all();
                if until_closed(sh, &mut client, MAX_STALL) {
                    sh.seen.lock().unwrap().stalls_closed_by_client += 1;
                    sh.changed.notify_all();
                }
                return Ok(());
            }
            Action::Forward | Action::ResetAfter(_) => {}
        }
        let up = match &mut upstream {
            Some(u) => u,
            None => {
                let u = TcpStream::connect(("127.0.0.1", sh.upstream))?;
                u.set_read_timeout(Some(POLL))?;
                let back = u.try_clone()?;
                let to_client = client.try_clone()?;
                let sh2 = sh.clone();
                std::thread::spawn(move || pump(sh2, back, to_client));
                upstream.insert(u)
            }
        };
        let limit = match action {
            Action::ResetAfter(n) => n.min(content_length),
            _ => content_length,
        };
        // Forward the head and up to `limit` body bytes.
        up.write_all(&buf[..head_len])?;
        let mut sent = 0u64;
        let extra = &buf[head_len..];
        let take = (extra.len() as u64).min(limit) as usize;
        up.write_all(&extra[..take])?;
        sent += take as u64;
        let mut leftover: Vec<u8> = extra[take..].to_vec();
        while sent < limit {
            let mut chunk = [0u8; 64 * 1024];
            match client.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    let t = ((limit - sent) as usize).min(n);
                    up.write_all(&chunk[..t])?;
                    sent += t as u64;
                    leftover.extend_from_slice(&chunk[t..n]);
                }
                Err(e) if is_timeout(&e) => {
                    if sh.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if let Action::ResetAfter(_) = action {
            // Unread bytes in the receive buffer make close() send a RST: when the
            // client still has body bytes to send, wait until some have arrived.
            let owed = content_length - limit;
            if owed > leftover.len() as u64 {
                until_readable(sh, &client);
            }
            let _ = up.shutdown(Shutdown::Both);
            drop(client);
            return Ok(());
        }
        // Anything after the body belongs to the next request (no pipelining from
        // ureq, but be exact).
        buf = leftover;
    }
}
