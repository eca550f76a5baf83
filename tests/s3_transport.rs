//! The S3 transport against a real S3 server (s3s-fs, which checks SigV4) on
//! 127.0.0.1: object round trips, multipart reassembly, aborts that leave no
//! orphans, the errors users see (wrong secret, missing bucket, server down) and TLS
//! through stunnel with a CA made here.

mod common;

use common::proxy::{Action, Proxy, Req};
use common::s3server::{free_port, temp_dir, S3Server};
use common::tlsutil::{make_ca_and_cert, start_stunnel};
use narpush::creds::Credentials;
use narpush::s3::{Client, RetryPolicy, S3Config, S3ErrorKind, StreamingUpload, TransportKind};
use narpush::store_url::StoreUrl;
use std::io::Write;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn config(url: &str, access: &str, secret: &str) -> S3Config {
    let StoreUrl::S3(u) = StoreUrl::parse(url, None).expect("parse store URL") else {
        panic!("{url} is not an s3:// URL")
    };
    let creds = Credentials {
        access_key_id: access.to_string(),
        secret_access_key: secret.to_string(),
        session_token: None,
    };
    u.client_config(creds)
}

fn client(server: &S3Server, bucket: &str) -> Client {
    Client::new(config(
        &server.url(bucket),
        &server.access_key,
        &server.secret_key,
    ))
    .expect("client")
}

/// Deterministic incompressible-looking bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_no_secret(msg: &str, server: &S3Server) {
    assert!(!msg.contains(&server.secret_key), "secret leaked: {msg}");
}

#[test]
fn object_round_trip() {
    let s = S3Server::start();
    s.create_bucket("nix-cache");
    let c = client(&s, "nix-cache");
    assert_eq!(
        c.describe(),
        format!("bucket 'nix-cache' at {}", s.endpoint())
    );

    assert_eq!(c.head_object("abc.narinfo").unwrap(), None);
    assert_eq!(c.get_object("abc.narinfo").unwrap(), None);

    let narinfo = b"StorePath: /nix/store/abc-hello\n";
    c.put_object("abc.narinfo", narinfo, "text/x-nix-narinfo")
        .unwrap();
    let odd_key = "nar/odd name+plus~tilde$.nar.zst";
    let nar = data(100_000, 7);
    c.put_object(odd_key, &nar, "application/x-nix-nar")
        .unwrap();
    c.put_object(
        "nix-cache-info",
        b"StoreDir: /nix/store\n",
        "text/x-nix-cache-info",
    )
    .unwrap();

    assert_eq!(
        c.head_object("abc.narinfo").unwrap(),
        Some(narinfo.len() as u64)
    );
    assert_eq!(
        c.get_object("abc.narinfo").unwrap().as_deref(),
        Some(&narinfo[..])
    );
    assert_eq!(c.get_object(odd_key).unwrap(), Some(nar.clone()));
    // s3s-fs keeps objects as plain files: later tests serve the bucket to real nix.
    assert_eq!(
        std::fs::read(s.object_path("nix-cache", odd_key)).unwrap(),
        nar
    );

    let mut all = c.list_objects_v2("").unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("abc.narinfo".to_string(), narinfo.len() as u64),
            ("nar/odd name+plus~tilde$.nar.zst".to_string(), 100_000),
            ("nix-cache-info".to_string(), 21),
        ]
    );
    assert_eq!(
        c.list_objects_v2("nar/").unwrap(),
        vec![(odd_key.to_string(), 100_000)]
    );

    c.delete_objects(&[
        "abc.narinfo".to_string(),
        odd_key.to_string(),
        "never-existed".to_string(),
    ])
    .unwrap();
    assert_eq!(c.head_object(odd_key).unwrap(), None);
    assert_eq!(
        c.list_objects_v2("").unwrap(),
        vec![("nix-cache-info".to_string(), 21)]
    );
}

#[test]
fn streaming_upload_small_is_single_put_and_large_is_multipart() {
    let s = S3Server::start();
    s.create_bucket("bkt");
    let c = client(&s, "bkt");

    // Smaller than a part: one PutObject.
    let small = data(1000, 1);
    let mut up = StreamingUpload::new(
        &c,
        "small.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        1000,
    );
    up.write_all(&small).unwrap();
    assert_eq!(up.finish().unwrap(), 1000);
    assert_eq!(c.get_object("small.nar").unwrap(), Some(small));

    // ~12 MiB in odd-sized writes with 5 MiB parts: 5 + 5 + ~2.
    let big = data(12 * MIB + 12345, 2);
    let mut up = StreamingUpload::new(
        &c,
        "nar/big.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        0,
    );
    assert_eq!(up.part_size(), 5 * MIB);
    for chunk in big.chunks(777_777) {
        up.write_all(chunk).unwrap();
    }
    // Two parts are up (once the upload thread is done with them) and the upload is
    // in progress before finish.
    up.flush().unwrap();
    let pending = s.pending_uploads();
    assert_eq!(pending.len(), 3, "upload info and two parts: {pending:?}");
    assert_eq!(up.finish().unwrap(), big.len() as u64);
    let got = c.get_object("nar/big.nar").unwrap().expect("object exists");
    assert!(
        got == big,
        "multipart object differs: {} vs {} bytes",
        got.len(),
        big.len()
    );
    assert_eq!(s.pending_uploads(), Vec::<String>::new());

    // Exactly one part: still a single PutObject (no upload is ever created).
    let one = data(5 * MIB, 3);
    let mut up = StreamingUpload::new(&c, "one.nar".into(), "application/x-nix-nar", 5 * MIB, 0);
    up.write_all(&one).unwrap();
    assert_eq!(s.pending_uploads(), Vec::<String>::new());
    assert_eq!(up.finish().unwrap(), one.len() as u64);
    assert_eq!(c.head_object("one.nar").unwrap(), Some(one.len() as u64));
}

#[test]
fn failed_or_dropped_multipart_uploads_leave_nothing_behind() {
    let s = S3Server::start();
    s.create_bucket("bkt");
    let c = client(&s, "bkt");

    // Dropped unfinished after a part went up: aborted.
    let mut up = StreamingUpload::new(
        &c,
        "dropped.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        0,
    );
    up.write_all(&data(6 * MIB, 4)).unwrap();
    up.flush().unwrap();
    assert_eq!(
        s.pending_uploads().len(),
        2,
        "the test must see the upload (info and part 1) first"
    );
    drop(up);
    assert_eq!(s.pending_uploads(), Vec::<String>::new());
    assert_eq!(c.head_object("dropped.nar").unwrap(), None);

    // A rejected completion fails with S3's code, not retried; aborting cleans up.
    // (s3s-fs does not check ETags; an empty part list it does reject.)
    let id = c
        .create_multipart_upload("bogus.nar", "application/x-nix-nar")
        .unwrap();
    let etag = c.upload_part("bogus.nar", &id, 1, &data(1000, 5)).unwrap();
    assert!(!etag.is_empty());
    let e = c
        .complete_multipart_upload("bogus.nar", &id, &[])
        .unwrap_err();
    assert_eq!(e.attempts, 1, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("CompleteMultipartUpload bogus.nar on bucket 'bkt'"),
        "{msg}"
    );
    assert_eq!(e.code(), Some("InvalidPart"), "{msg}");
    assert!(!e.is_transient());
    assert_eq!(
        s.pending_uploads().len(),
        2,
        "still pending before the abort"
    );
    c.abort_multipart_upload("bogus.nar", &id).unwrap();
    assert_eq!(s.pending_uploads(), Vec::<String>::new());
    assert_eq!(c.head_object("bogus.nar").unwrap(), None);

    // An explicit abort mid-stream.
    let mut up = StreamingUpload::new(
        &c,
        "aborted.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        0,
    );
    up.write_all(&data(11 * MIB, 6)).unwrap();
    up.abort();
    assert_eq!(s.pending_uploads(), Vec::<String>::new());
}

#[test]
fn wrong_secret_fails_fast_with_code_bucket_and_endpoint() {
    let s = S3Server::start();
    s.create_bucket("nix-cache");
    let bad_secret = "definitely-not-the-secret-9f3k";
    let c = Client::new(config(&s.url("nix-cache"), &s.access_key, bad_secret)).unwrap();
    let e = c.put_object("x.narinfo", b"x", "text/plain").unwrap_err();
    let msg = e.to_string();
    // Fails fast: one request, no retries (a count, not a time).
    assert_eq!(e.attempts, 1, "{msg}");
    assert!(!e.is_transient());
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");
    assert!(
        msg.contains("bucket 'nix-cache'") && msg.contains(&s.endpoint()),
        "{msg}"
    );
    assert!(msg.contains("check the secret key"), "{msg}");
    assert!(
        !msg.contains(bad_secret) && !format!("{e:?}").contains(bad_secret),
        "{msg}"
    );
    assert_no_secret(&msg, &s);

    // An unknown access key.
    let c = Client::new(config(&s.url("nix-cache"), "AKIDUNKNOWN", &s.secret_key)).unwrap();
    let e = c.head_object("x.narinfo").unwrap_err();
    assert_eq!(e.attempts, 1, "{e}");
    assert_eq!(e.status(), Some(403), "{e}");
    // A HEAD's 403 has no body: the real reason comes from a GET of the same key
    // (AWS and MinIO call it InvalidAccessKeyId, s3s NotSignedUp).
    assert_eq!(e.code(), Some("NotSignedUp"), "{e}");
    assert!(e.to_string().contains("check the access key id"), "{e}");
    assert_no_secret(&e.to_string(), &s);
}

#[test]
fn a_head_answered_403_names_the_real_reason() {
    let s = S3Server::start();
    s.create_bucket("nix-cache");
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let url = proxy.url("nix-cache", "");
    let c = Client::new(config(&url, &s.access_key, "not-the-secret")).unwrap();
    let e = c.head_object("x.narinfo").unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("SignatureDoesNotMatch")),
        "{e}"
    );
    assert!(e.to_string().contains("check the secret key"), "{e}");
    // Asked once per client: a later HEAD's 403 costs no second GET.
    let e = c.head_object("y.narinfo").unwrap_err();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"), "{e}");
    let methods: Vec<String> = proxy.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET", "HEAD"]);
}

#[test]
fn missing_bucket_is_no_such_bucket() {
    let s = S3Server::start();
    let c = client(&s, "no-such-bucket");
    // (s3s-fs lets PutObject create a missing bucket's directory, so list.)
    let e = c.list_objects_v2("").unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.code(), Some("NoSuchBucket"), "{msg}");
    assert!(
        msg.contains("ListObjectsV2 on bucket 'no-such-bucket'"),
        "{msg}"
    );
    assert!(
        msg.contains("create the bucket or fix the store URL"),
        "{msg}"
    );
    assert_eq!(e.attempts, 1);
    assert_no_secret(&msg, &s);
    let e = c.head_object("x.narinfo");
    assert!(
        matches!(e, Ok(None)),
        "HEAD has no body: a 404 is just absent: {e:?}"
    );

    // create_bucket makes it usable.
    c.create_bucket().unwrap();
    c.put_object("x.narinfo", b"x", "text/plain").unwrap();
    assert_eq!(
        c.list_objects_v2("").unwrap(),
        vec![("x.narinfo".to_string(), 1)]
    );
}

/// Scheduling slack on top of a retry budget: a loaded 2-core CI machine can be
/// seconds late; what these checks catch (sleeping on without a budget, an hour's
/// Retry-After) is far beyond it.
const BUDGET_SLACK: Duration = Duration::from_secs(30);

/// The retries that began at `start` gave up within `budget` (plus slack).
fn assert_within_budget(start: Instant, budget: Duration, what: &str) {
    let took = start.elapsed();
    assert!(
        took < budget + BUDGET_SLACK,
        "took {took:?} with a retry budget of {budget:?}: {what}"
    );
}

#[test]
fn server_down_retries_then_fails_clearly_within_budget() {
    let mut s = S3Server::start();
    s.create_bucket("bkt");
    let mut cfg = config(&s.url("bkt"), &s.access_key, &s.secret_key);
    cfg.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        max_total: Duration::from_secs(5),
    };
    let c = Client::new(cfg).unwrap();
    c.put_object("a", b"1", "text/plain").unwrap();
    s.stop();
    let t = Instant::now();
    let e = c.put_object("b", b"2", "text/plain").unwrap_err();
    let msg = e.to_string();
    assert_within_budget(t, Duration::from_secs(5), &msg);
    assert_eq!(e.attempts, 4, "{msg}");
    assert!(
        matches!(
            e.kind,
            S3ErrorKind::Transport {
                kind: TransportKind::Connect,
                ..
            }
        ),
        "{msg}"
    );
    assert!(e.is_transient());
    assert!(
        msg.to_ascii_lowercase().contains("connection refused") && msg.contains("after 4 attempts"),
        "{msg}"
    );
    assert!(msg.contains(&s.endpoint()), "{msg}");
    assert_no_secret(&msg, &s);

    // The budget bounds the total even with many attempts allowed.
    let mut cfg = config(&s.url("bkt"), &s.access_key, &s.secret_key);
    cfg.retry = RetryPolicy {
        max_attempts: 1000,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(500),
        max_total: Duration::from_secs(2),
    };
    let c2 = Client::new(cfg).unwrap();
    let t = Instant::now();
    let e = c2.head_object("a").unwrap_err();
    assert_within_budget(t, Duration::from_secs(2), &e.to_string());
    assert!(e.attempts > 1 && e.attempts < 1000, "{e}");

    // Back up: the same client works again.
    s.restart();
    assert_eq!(c.get_object("a").unwrap().as_deref(), Some(&b"1"[..]));
}

/// All TLS cases in one test: they read SSL_CERT_FILE, which no other test sets.
#[test]
fn tls_with_private_ca() {
    let s = S3Server::start();
    s.create_bucket("bkt");
    let dir = temp_dir("tls");
    make_ca_and_cert(&dir);
    let tls_port = free_port();
    let _st = start_stunnel(&dir, tls_port, s.port);
    let url = format!("s3://bkt?endpoint=https://127.0.0.1:{tls_port}");
    let ca = dir.join("ca.pem");

    // Trusting the CA through the config field.
    let mut cfg = config(&url, &s.access_key, &s.secret_key);
    cfg.trust_file = Some(ca.clone());
    let c = Client::new(cfg).unwrap();
    c.put_object("tls.narinfo", b"over tls", "text/plain")
        .unwrap();
    assert_eq!(
        c.get_object("tls.narinfo").unwrap().as_deref(),
        Some(&b"over tls"[..])
    );

    // Not trusting it (no NIX_SSL_CERT_FILE/SSL_CERT_FILE: the system bundle).
    std::env::remove_var("NIX_SSL_CERT_FILE");
    std::env::remove_var("SSL_CERT_FILE");
    let c = Client::new(config(&url, &s.access_key, &s.secret_key)).unwrap();
    let e = c.head_object("tls.narinfo").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e.kind,
            S3ErrorKind::Transport {
                kind: TransportKind::Tls,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("certificate is not trusted") && msg.contains("SSL_CERT_FILE"),
        "{msg}"
    );
    assert_eq!(e.attempts, 1, "certificate errors are not retried: {msg}");

    // Trusting it through SSL_CERT_FILE, read when the client is made.
    std::env::set_var("SSL_CERT_FILE", &ca);
    let c = Client::new(config(&url, &s.access_key, &s.secret_key));
    std::env::remove_var("SSL_CERT_FILE");
    assert_eq!(c.unwrap().head_object("tls.narinfo").unwrap(), Some(8));

    // A named bundle that does not exist is an error naming it.
    std::env::set_var("SSL_CERT_FILE", dir.join("missing.pem"));
    let r = Client::new(config(&url, &s.access_key, &s.secret_key));
    std::env::remove_var("SSL_CERT_FILE");
    let m = r.unwrap_err().to_string();
    assert!(
        m.contains("missing.pem") && m.contains("SSL_CERT_FILE"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scripted HTTP server for what s3s-fs cannot show: it answers requests in order
/// with canned responses (closing each connection) and records what it was sent.
/// The server never waits longer than this for the script to be used up: a client
/// that sends fewer requests than scripted fails the test instead of hanging it.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

struct Scripted {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Closed (or sent on) when the server thread ends.
    done: std::sync::mpsc::Receiver<()>,
    /// Set when the test is done with the server: its thread stops waiting.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    scripted: usize,
}

/// The next connection to `listener` (non-blocking), or `None` once `deadline`
/// passes or `stop` is set: the server thread never blocks in accept for good.
fn accept_by(
    listener: &std::net::TcpListener,
    deadline: Instant,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<std::net::TcpStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || Instant::now() >= deadline {
                    return None;
                }
                // Polling: nothing to wait on but the client's connect.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("scripted server: accept: {e}"),
        }
    }
}

impl Scripted {
    fn start(responses: Vec<String>) -> Scripted {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let scripted = responses.len();
        let (done_tx, done) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let deadline = Instant::now() + SCRIPT_DEADLINE;
        let thread = std::thread::spawn(move || {
            for resp in responses {
                let Some(mut stream) = accept_by(&listener, deadline, &stopping) else {
                    if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        // The test has given up already and said why.
                        return;
                    }
                    let seen = log.lock().unwrap().clone();
                    panic!(
                        "the client sent {} of {scripted} scripted requests within \
                         {SCRIPT_DEADLINE:?}: {seen:?}",
                        seen.len()
                    );
                };
                // A client that stops mid-request cannot hold the thread forever.
                stream.set_read_timeout(Some(SCRIPT_DEADLINE)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut len = 0usize;
                let mut has_auth = false;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    has_auth |= lower.starts_with("authorization: aws4-hmac-sha256 credential=");
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                assert!(has_auth, "unsigned request: {request_line}");
                log.lock()
                    .unwrap()
                    .push(request_line.trim_end().to_string());
                stream.write_all(resp.as_bytes()).unwrap();
            }
            let _ = done_tx.send(());
        });
        Scripted {
            port,
            seen,
            thread: Some(thread),
            done,
            stop,
            scripted,
        }
    }

    fn client(&self, retry: RetryPolicy) -> Client {
        let url = format!("s3://bkt?endpoint=127.0.0.1:{}&scheme=http", self.port);
        let mut cfg = config(&url, "AKIDTEST", "scripted-secret");
        cfg.retry = retry;
        Client::new(cfg).unwrap()
    }

    /// Wait for the script to be used up and return the request lines seen.
    fn finish(self) -> Vec<String> {
        self.finish_within(SCRIPT_DEADLINE)
    }

    /// [`Scripted::finish`] with a deadline: panics naming the requests seen if the
    /// script is not used up by then (the server thread is left blocked in accept).
    fn finish_within(mut self, deadline: Duration) -> Vec<String> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.done.recv_timeout(deadline) {
            // Disconnected: the thread panicked; its message is the test's.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Err(why) = self.thread.take().unwrap().join() {
                    std::panic::resume_unwind(why);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
                let seen = self.seen.lock().unwrap().clone();
                panic!(
                    "the client sent {} of {} scripted requests within {deadline:?}: {seen:?}",
                    seen.len(),
                    self.scripted
                )
            }
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    /// A test that fails before `finish` does not leave the server waiting.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn http(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn s3_error_xml(code: &str, message: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>")
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_total: Duration::from_secs(10),
    }
}

#[test]
fn retries_slowdown_and_honours_retry_after() {
    let srv = Scripted::start(vec![
        http(
            "503 Slow Down",
            "Retry-After: 1\r\n",
            &s3_error_xml("SlowDown", "Please reduce your request rate."),
        ),
        http(
            "500 Internal Server Error",
            "",
            &s3_error_xml("InternalError", "We encountered an internal error."),
        ),
        http("200 OK", "ETag: \"abc\"\r\n", ""),
    ]);
    let c = srv.client(quick_retry());
    let t = Instant::now();
    c.put_object("nar/x.nar", b"data", "application/x-nix-nar")
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured: {:?}",
        t.elapsed()
    );
    let seen = srv.finish();
    assert_eq!(seen, vec!["PUT /bkt/nar/x.nar HTTP/1.1"; 3]);
}

#[test]
fn retry_after_is_capped_by_the_budget() {
    let srv = Scripted::start(vec![
        http(
            "503 Slow Down",
            "Retry-After: 3600\r\n",
            &s3_error_xml("SlowDown", "slow")
        );
        2
    ]);
    let c = srv.client(RetryPolicy {
        max_total: Duration::from_millis(600),
        ..quick_retry()
    });
    let t = Instant::now();
    let e = c.head_object("k").unwrap_err();
    // Without the cap the client would sleep an hour.
    assert_within_budget(t, Duration::from_millis(600), &e.to_string());
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(e.attempts, 2, "{e}");
    srv.finish();
}

#[test]
fn forbidden_is_not_retried_and_head_403_is_access_denied() {
    let srv = Scripted::start(vec![
        http(
            "403 Forbidden",
            "",
            &s3_error_xml("AccessDenied", "Access Denied"),
        ),
        http("403 Forbidden", "", ""),
        // The GET that asks a bodiless 403 for its reason.
        http(
            "403 Forbidden",
            "",
            &s3_error_xml("AccessDenied", "Access Denied"),
        ),
    ]);
    let c = srv.client(quick_retry());
    let e = c.get_object("x.narinfo").unwrap_err();
    assert_eq!((e.code(), e.attempts), (Some("AccessDenied"), 1), "{e}");
    assert!(
        e.to_string()
            .contains("HTTP 403 AccessDenied: Access Denied; check the access key"),
        "{e}"
    );
    let e = c.head_object("x.narinfo").unwrap_err();
    assert_eq!((e.code(), e.attempts), (Some("AccessDenied"), 1), "{e}");
    assert_eq!(srv.finish().len(), 3);
}

#[test]
fn a_head_403_from_an_unknown_access_key_says_so() {
    let srv = Scripted::start(vec![
        http("403 Forbidden", "", ""),
        http(
            "403 Forbidden",
            "",
            &s3_error_xml(
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            ),
        ),
    ]);
    let c = srv.client(quick_retry());
    let e = c.head_object("x.narinfo").unwrap_err();
    assert_eq!(e.code(), Some("InvalidAccessKeyId"), "{e}");
    assert!(e.to_string().contains("check the access key id"), "{e}");
    let reqs = srv.finish();
    assert!(
        reqs[0].starts_with("HEAD ") && reqs[1].starts_with("GET "),
        "{reqs:?}"
    );
}

#[test]
fn listings_follow_continuation_and_markers() {
    let page1 = "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>tok/1+=</NextContinuationToken>\
                 <Contents><Key>a &amp; b</Key><Size>1</Size></Contents></ListBucketResult>";
    let page2 = "<ListBucketResult><IsTruncated>false</IsTruncated>\
                 <Contents><Key>c</Key><Size>22</Size></Contents></ListBucketResult>";
    let up1 = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextKeyMarker>k1</NextKeyMarker>\
               <NextUploadIdMarker>u1</NextUploadIdMarker><Upload><Key>k1</Key><UploadId>u1</UploadId></Upload>\
               </ListMultipartUploadsResult>";
    let up2 = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>\
               <Upload><Key>k2</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>";
    let srv = Scripted::start(vec![
        http("200 OK", "", page1),
        http("200 OK", "", page2),
        http("200 OK", "", up1),
        http("200 OK", "", up2),
    ]);
    let c = srv.client(quick_retry());
    assert_eq!(
        c.list_objects_v2("").unwrap(),
        vec![("a & b".to_string(), 1), ("c".to_string(), 22)]
    );
    assert_eq!(
        c.list_multipart_uploads().unwrap(),
        vec![
            ("k1".to_string(), "u1".to_string()),
            ("k2".to_string(), "u2".to_string())
        ]
    );
    let seen = srv.finish();
    assert_eq!(seen[0], "GET /bkt?list-type=2&prefix= HTTP/1.1");
    assert_eq!(
        seen[1],
        "GET /bkt?continuation-token=tok%2F1%2B%3D&list-type=2&prefix= HTTP/1.1"
    );
    assert_eq!(seen[2], "GET /bkt?uploads= HTTP/1.1");
    assert_eq!(
        seen[3],
        "GET /bkt?key-marker=k1&upload-id-marker=u1&uploads= HTTP/1.1"
    );
}

#[test]
fn complete_answering_200_with_an_error_is_an_error() {
    let srv = Scripted::start(vec![http(
        "200 OK",
        "",
        &s3_error_xml(
            "InvalidPart",
            "One or more of the specified parts could not be found.",
        ),
    )]);
    let c = srv.client(quick_retry());
    let e = c
        .complete_multipart_upload("k", "u1", &[(1, "\"e\"".into())])
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidPart"), "{e}");
    assert_eq!(srv.finish(), vec!["POST /bkt/k?uploadId=u1 HTTP/1.1"]);
}

#[test]
fn a_part_that_fails_aborts_the_upload() {
    let srv = Scripted::start(vec![
        http("200 OK", "", "<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>"),
        http("400 Bad Request", "", &s3_error_xml("EntityTooSmall", "Your proposed upload is smaller than the minimum")),
        http("204 No Content", "", ""),
    ]);
    let c = srv.client(quick_retry());
    let mut up = StreamingUpload::new(&c, "nar/y.nar".into(), "application/x-nix-nar", 5 * MIB, 0);
    up.write_all(&vec![0u8; 5 * MIB]).unwrap();
    // The full part goes to the upload thread with the next write; its failure
    // comes back from that write or, at the latest, from flush.
    let err = up.write_all(b"more").and_then(|()| up.flush()).unwrap_err();
    let e = narpush::s3::S3Error::from_io(err).expect("the io::Error carries the S3Error");
    assert_eq!(e.code(), Some("EntityTooSmall"), "{e}");
    // Later writes and finish keep failing with the same error.
    assert!(up.write_all(b"x").is_err());
    assert_eq!(up.finish().unwrap_err().code(), Some("EntityTooSmall"));
    assert_eq!(
        srv.finish(),
        vec![
            "POST /bkt/nar/y.nar?uploads= HTTP/1.1",
            "PUT /bkt/nar/y.nar?partNumber=1&uploadId=up-1 HTTP/1.1",
            "DELETE /bkt/nar/y.nar?uploadId=up-1 HTTP/1.1",
        ]
    );
}

/// A completion whose answer was lost (here: a 500 after which the retry finds no
/// such upload, as when the first attempt timed out while the server assembled a
/// large object) is recognised by an object of exactly the streamed size.
#[test]
fn a_completion_whose_answer_was_lost_is_recognised_by_the_object() {
    let total = 5 * MIB + 1;
    let head = |status: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
    };
    let script = |last_head: String| {
        vec![
            http("200 OK", "", "<InitiateMultipartUploadResult><UploadId>up-9</UploadId></InitiateMultipartUploadResult>"),
            http("200 OK", "ETag: \"p1\"\r\n", ""),
            http("200 OK", "ETag: \"p2\"\r\n", ""),
            http("500 Internal Server Error", "", &s3_error_xml("InternalError", "try again")),
            http("404 Not Found", "", &s3_error_xml("NoSuchUpload", "The specified upload does not exist.")),
            last_head,
        ]
    };
    let srv = Scripted::start(script(head("200 OK")));
    let c = srv.client(quick_retry());
    let mut up = StreamingUpload::new(
        &c,
        "nar/z-abc.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        0,
    );
    up.write_all(&vec![7u8; total]).unwrap();
    assert_eq!(up.finish().unwrap(), total as u64);
    let seen = srv.finish();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("HEAD /bkt/nar/z-abc.nar HTTP/1.1"),
        "{seen:?}"
    );

    // No object (or another size) under the key: the failure stands and the upload
    // is aborted.
    let mut script = script(http("404 Not Found", "", ""));
    script.push(http("204 No Content", "", ""));
    let srv = Scripted::start(script);
    let c = srv.client(quick_retry());
    let mut up = StreamingUpload::new(
        &c,
        "nar/z-abc.nar".into(),
        "application/x-nix-nar",
        5 * MIB,
        0,
    );
    up.write_all(&vec![7u8; total]).unwrap();
    assert_eq!(up.finish().unwrap_err().code(), Some("NoSuchUpload"));
    let seen = srv.finish();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("DELETE /bkt/nar/z-abc.nar?uploadId=up-9 HTTP/1.1"),
        "{seen:?}"
    );
}

#[test]
fn a_client_that_sends_fewer_requests_than_scripted_fails_instead_of_hanging() {
    let srv = Scripted::start(vec![http("200 OK", "", "a"), http("200 OK", "", "b")]);
    let c = srv.client(quick_retry());
    assert_eq!(c.get_object("k").unwrap().as_deref(), Some(&b"a"[..]));
    // The second request never comes: finish must give up, not wait forever.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        srv.finish_within(Duration::from_millis(300))
    }));
    let msg = r.expect_err("an unfinished script passed");
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("sent 1 of 2 scripted requests"), "{msg}");
}

#[test]
fn the_scripted_server_itself_stops_waiting_at_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    // Nobody connects: accept gives up at the deadline instead of blocking.
    let t = Instant::now();
    assert!(accept_by(&listener, t + Duration::from_millis(100), &never).is_none());
    // A client that connects is accepted, on a blocking socket.
    let port = listener.local_addr().unwrap().port();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = accept_by(&listener, Instant::now() + SCRIPT_DEADLINE, &never);
    assert!(got.is_some(), "the waiting connection is accepted");
    // Told to stop, it stops at once however far the deadline.
    let stop = std::sync::atomic::AtomicBool::new(true);
    assert!(accept_by(&listener, Instant::now() + SCRIPT_DEADLINE, &stop).is_none());
}

/// A client through a counting proxy with these URL parameters.
fn proxied(server: &S3Server, proxy: &Proxy, extra: &str) -> Client {
    Client::new(config(
        &proxy.url("reuse", extra),
        &server.access_key,
        &server.secret_key,
    ))
    .expect("client")
}

#[test]
fn connections_are_reused_until_idle_past_the_limit() {
    let s = S3Server::start();
    s.create_bucket("reuse");
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let conns = |p: &Proxy| {
        p.requests()
            .iter()
            .map(|r| r.conn)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // Within the limit: one connection for every request, also after a pause.
    let c = proxied(&s, &proxy, "&idle-timeout=60");
    c.put_object("a", b"1", "text/plain").unwrap();
    for _ in 0..5 {
        assert!(c.head_object("a").unwrap().is_some());
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.head_object("a").unwrap().is_some());
    assert_eq!((proxy.requests().len(), conns(&proxy)), (7, 1));
    // Idle for longer than the limit: a new connection.
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let c = proxied(&s, &proxy, "&idle-timeout=1");
    c.put_object("b", b"2", "text/plain").unwrap();
    assert!(c.head_object("b").unwrap().is_some());
    assert_eq!(conns(&proxy), 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(c.head_object("b").unwrap().is_some());
    assert_eq!((proxy.requests().len(), conns(&proxy)), (3, 2));
    // idle-timeout=0: a connection per request.
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let c = proxied(&s, &proxy, "&idle-timeout=0");
    for _ in 0..3 {
        assert!(c.head_object("b").unwrap().is_some());
    }
    assert_eq!(conns(&proxy), 3);
}

#[test]
fn a_stall_on_a_reused_connection_times_out() {
    let s = S3Server::start();
    s.create_bucket("reuse");
    // The first request is answered, every later one stalls.
    let proxy = Proxy::start(s.port, |r: &Req| {
        if r.index == 0 {
            Action::Forward
        } else {
            Action::Stall
        }
    });
    let c = proxied(&s, &proxy, "&io-timeout=2&retry-attempts=1");
    assert_eq!(c.head_object("x").unwrap(), None);
    let t = Instant::now();
    let e = c
        .put_object("x", &data(3 * MIB, 5), "application/octet-stream")
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(
            &e.kind,
            S3ErrorKind::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{e}"
    );
    let reqs = proxy.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].conn, reqs[0].conn,
        "the PUT went over the reused connection"
    );
    // The 2 s read/write timeout held on the reused connection: the client closed
    // the stalled connection itself (without a timeout the proxy's 120 s limit
    // would have released it), well within a bound no loaded machine reaches.
    assert!(
        proxy.wait_for(Duration::from_secs(60), |s| s.stalls_closed_by_client == 1),
        "the client never gave up on the stalled PUT"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn every_operation_signs_only_what_it_must() {
    let s = S3Server::start();
    s.create_bucket("reuse");
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let c = proxied(&s, &proxy, "");
    c.put_object("a.narinfo", b"x", "text/x-nix-narinfo")
        .unwrap();
    assert!(c.head_object("a.narinfo").unwrap().is_some());
    assert!(c.get_object("a.narinfo").unwrap().is_some());
    c.list_objects_v2("").unwrap();
    let mut up = StreamingUpload::new(&c, "nar/m.nar".into(), "application/x-nix-nar", 5 * MIB, 0);
    up.write_all(&data(11 * MIB, 9)).unwrap();
    up.finish().unwrap();
    let mut up = StreamingUpload::new(&c, "nar/d.nar".into(), "application/x-nix-nar", 5 * MIB, 0);
    up.write_all(&data(6 * MIB, 8)).unwrap();
    up.flush().unwrap();
    drop(up);
    c.delete_objects(&["a.narinfo".to_string(), "nar/m.nar".to_string()])
        .unwrap();
    let reqs = proxy.requests();
    let ops: std::collections::BTreeSet<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.target.split('=').next().unwrap_or("")))
        .collect();
    // PUT, HEAD, GET, list, create/part/complete/abort multipart, DeleteObjects.
    assert!(ops.len() >= 8, "{ops:?}");
    common::proxy::assert_signs_only_what_it_must(&reqs);
}

#[test]
fn parts_go_up_side_by_side_within_the_memory_budget() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    // 16 MiB for the parts in flight and the one filling: two 5 MiB parts in flight.
    assert_eq!(narpush::s3::parts_in_flight(5 * MIB), 2);
    assert_eq!(narpush::s3::parts_in_flight(8 * MIB), 1);
    assert_eq!(narpush::s3::parts_in_flight(64 * MIB), 1);
    let s = S3Server::start();
    s.create_bucket("reuse");
    // Part 1 is held until part 2 has reached the proxy (or 30 s pass): only an
    // upload with two parts in flight gets part 2 there before part 1 is answered.
    let seen2 = Arc::new((Mutex::new(false), Condvar::new()));
    let side_by_side = Arc::new(AtomicBool::new(false));
    let (s2, sbs) = (seen2.clone(), side_by_side.clone());
    let proxy = Proxy::start(s.port, move |r: &Req| {
        if r.is_upload_part() && r.target.contains("partNumber=2&") {
            *s2.0.lock().unwrap() = true;
            s2.1.notify_all();
        }
        if r.is_upload_part() && r.target.contains("partNumber=1&") {
            let g = s2.0.lock().unwrap();
            let (g, _) =
                s2.1.wait_timeout_while(g, Duration::from_secs(30), |seen| !*seen)
                    .unwrap();
            sbs.store(*g, Ordering::SeqCst);
        }
        Action::Forward
    });
    let c = proxied(&s, &proxy, "");
    let big = data(12 * MIB + 1, 11);
    let mut up = StreamingUpload::new(&c, "nar/p.nar".into(), "application/x-nix-nar", 5 * MIB, 0);
    up.write_all(&big).unwrap();
    assert_eq!(up.finish().unwrap(), big.len() as u64);
    assert!(
        side_by_side.load(Ordering::SeqCst),
        "part 2 only went up after part 1"
    );
    let got = c.get_object("nar/p.nar").unwrap().expect("object exists");
    assert!(got == big, "reassembled object differs");
    assert_eq!(s.pending_uploads(), Vec::<String>::new());
}

#[test]
fn an_answer_trickled_a_byte_at_a_time_times_out() {
    let s = S3Server::start();
    s.create_bucket("reuse");
    // ~85 bytes of head at one byte per 300 ms: ~25 s, never 2 s without a byte.
    let answer = common::proxy::http_response(200, "OK", &[("Content-Type", "text/plain")], "");
    let total = answer.len();
    let proxy = Proxy::start(s.port, move |_: &Req| {
        Action::Trickle(answer.clone(), Duration::from_millis(300))
    });
    let c = proxied(&s, &proxy, "&io-timeout=2&retry-attempts=1");
    let t = Instant::now();
    let e = c.head_object("x.narinfo").unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(
            &e.kind,
            S3ErrorKind::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{e}"
    );
    // A count, not a time (a loaded machine slows the trickle too): the client
    // gave up before half of the head had arrived (at 2 s, about 7 bytes).
    assert!(
        proxy.wait_for(Duration::from_secs(60), |s| s.trickles_ended == 1),
        "the trickle never ended"
    );
    let sent = proxy.with_seen(|s| s.trickled_bytes);
    assert!(
        sent < total / 2,
        "the client waited for {sent} of {total} bytes ({took:?})"
    );
}

#[test]
fn a_body_trickled_a_byte_at_a_time_times_out() {
    let s = S3Server::start();
    s.create_bucket("reuse");
    // The head at once, then 200 bytes of body at one byte per 300 ms: ~60 s, never
    // 2 s without a byte, so only a deadline for the whole body ends it.
    let body = "x".repeat(200);
    let answer = common::proxy::http_response(200, "OK", &[("Content-Type", "text/plain")], &body);
    let head = answer.len() - body.len();
    let proxy = Proxy::start(s.port, move |_: &Req| {
        Action::TrickleFrom(answer.clone(), head, Duration::from_millis(300))
    });
    let c = proxied(&s, &proxy, "&io-timeout=2&retry-attempts=1");
    let t = Instant::now();
    let e = c.get_object("x.narinfo").unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(
            &e.kind,
            S3ErrorKind::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("slower than"), "{e}");
    // A count, not a time: the client gave up before half of the body had arrived
    // (at about 2 s, some 7 of its 200 bytes).
    assert!(
        proxy.wait_for(Duration::from_secs(120), |s| s.trickles_ended == 1),
        "the trickle never ended"
    );
    let sent = proxy.with_seen(|s| s.trickled_bytes) - head;
    assert!(
        sent < 100,
        "the client waited for {sent} of 200 bytes of body ({took:?})"
    );
}
