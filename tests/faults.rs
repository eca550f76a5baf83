//! Faults between narpush and a real S3 server (s3s-fs), injected by a TCP proxy
//! (`common::proxy`): refused connections, unresolvable hosts, resets in the middle
//! of a NAR, 503/500 answers, a CompleteMultipartUpload that always fails, stalls,
//! SIGKILL mid-upload, wrong credentials, an unwritable state directory and many
//! hooks at once over a lossy link. After each, the bucket is checked from disk
//! (`common::cachecheck`): no narinfo without its NAR or with a FileHash/FileSize
//! that disagrees, no multipart upload left behind, every path in the cache or in
//! the pending list. Timeouts are shortened through the store URL
//! (`connect-timeout`, `io-timeout`, `retry-attempts`); the only timing assertions
//! are generous upper bounds (and Retry-After's lower bound, a sleep narpush owes).

mod common;

use common::cachecheck::{big_path, check_all, check_bucket, lines_naming, small_paths, Env};
use common::nix::{stderr, stdout};
use common::proxy::{refused_port, s3_error, Action, Proxy, Req};
use common::s3server::S3Server;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BUCKET: &str = "faults";
/// Short timeouts and few attempts, so that faults resolve quickly.
const QUICK: &str = "&connect-timeout=2&io-timeout=2&retry-attempts=3";
/// Multipart with 5 MiB parts and no compression: the big path is three parts.
const MULTIPART: &str = "&multipart-chunk-size=5242880&compression=none";

fn server() -> S3Server {
    let s = S3Server::start();
    s.create_bucket(BUCKET);
    s
}

/// The hook exited 0 and named every path in exactly one line of stderr.
fn assert_hook_failed_softly(out: &std::process::Output, paths: &[String]) {
    let err = stderr(out);
    assert!(out.status.success(), "hook must exit 0: {err}");
    for p in paths {
        let lines = lines_naming(&err, p);
        assert_eq!(lines.len(), 1, "one line for {p}:\n{err}");
        assert!(lines[0].starts_with("narpush: failed "), "{err}");
    }
    assert!(err.contains("recorded in"), "{err}");
}

#[test]
fn unreachable_server_refused_and_unresolvable() {
    let s = server();
    let paths = small_paths("unreachable", 2);
    for (what, endpoint) in [
        ("refused", format!("127.0.0.1:{}", refused_port())),
        ("dns", "nonexistent.invalid:9000".to_string()),
    ] {
        let env = Env::new(&format!("unreach-{what}"), &s);
        // Default timeouts and retries: what a user gets.
        let url = format!("s3://{BUCKET}?endpoint={endpoint}&scheme=http");
        let (out, took) = env.hook(&url, &paths);
        eprintln!("{what}: hook took {took:?}");
        assert_hook_failed_softly(&out, &paths);
        let err = stderr(&out);
        let want = if what == "dns" {
            "cannot resolve the host"
        } else {
            "cannot connect"
        };
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(env.pending(), paths, "{what}");
        check_all(&s, BUCKET, &paths, &env.pending());
        assert!(took < Duration::from_secs(120), "{what}: {took:?}");
    }
}

#[test]
fn reset_in_the_middle_of_a_single_put_nar_is_retried() {
    let s = server();
    let resets = Arc::new(AtomicUsize::new(0));
    let r = resets.clone();
    let proxy = Proxy::start(s.port, move |req: &Req| {
        if req.method == "PUT" && req.is_nar() && r.fetch_add(1, Ordering::SeqCst) == 0 {
            Action::ResetAfter(100)
        } else {
            Action::Forward
        }
    });
    let paths = small_paths("reset-put", 1);
    let env = Env::new("reset-put", &s);
    let url = proxy.url(BUCKET, &format!("{QUICK}&compression=none"));
    let (out, _) = env.hook(&url, &paths);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(resets.load(Ordering::SeqCst) >= 2, "the NAR was sent again");
    let (cached, _) = check_all(&s, BUCKET, &paths, &env.pending());
    assert!(cached.contains(&paths[0]), "{}", stderr(&out));
    assert!(env.pending().is_empty(), "{:?}", env.pending());
}

#[test]
fn reset_in_a_multipart_part_aborts_the_upload_and_leaves_the_path_pending() {
    let s = server();
    let faulty = Arc::new(AtomicBool::new(true));
    let f = faulty.clone();
    let proxy = Proxy::start(s.port, move |req: &Req| {
        if f.load(Ordering::SeqCst) && req.is_upload_part() && req.target.contains("partNumber=2") {
            Action::ResetAfter(1 << 20)
        } else {
            Action::Forward
        }
    });
    let paths = vec![big_path()];
    let env = Env::new("reset-part", &s);
    let url = proxy.url(BUCKET, &format!("{QUICK}{MULTIPART}"));
    let (out, _) = env.hook(&url, &paths);
    assert_hook_failed_softly(&out, &paths);
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == "DELETE" && r.target.contains("uploadId=")),
        "the upload was aborted: {reqs:#?}"
    );
    let (cached, pending) = check_all(&s, BUCKET, &paths, &env.pending());
    assert!(cached.is_empty() && pending.contains(&paths[0]));

    // The link heals: retry pushes it.
    faulty.store(false, Ordering::SeqCst);
    let (out, _) = env.retry(&url);
    assert!(out.status.success(), "{}", stderr(&out));
    let (cached, _) = check_all(&s, BUCKET, &paths, &env.pending());
    assert!(cached.contains(&paths[0]));
    assert!(env.pending().is_empty());
}

#[test]
fn slowdown_and_500_then_success_honours_retry_after() {
    let s = server();
    let proxy = Proxy::start(s.port, |req: &Req| match req.index {
        0 => Action::Respond(s3_error(
            503,
            "Slow Down",
            "SlowDown",
            &[("Retry-After", "2")],
        )),
        1 => Action::Respond(s3_error(500, "Internal Server Error", "InternalError", &[])),
        _ => Action::Forward,
    });
    let paths = small_paths("slowdown", 2);
    let env = Env::new("slowdown", &s);
    let url = proxy.url(BUCKET, QUICK);
    let (out, _) = env.hook(&url, &paths);
    assert!(out.status.success(), "{}", stderr(&out));
    let (cached, _) = check_all(&s, BUCKET, &paths, &env.pending());
    assert_eq!(cached.len(), 2, "{}", stderr(&out));
    assert!(env.pending().is_empty());
    // The retry of the request that got Retry-After: 2 came at least 2 s later.
    let reqs = proxy.requests();
    let first = &reqs[0];
    let again = reqs
        .iter()
        .skip(1)
        .find(|r| r.method == first.method && r.target == first.target)
        .expect("the throttled request was retried");
    let gap = again.at.duration_since(first.at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After ignored: {gap:?}"
    );
}

#[test]
fn complete_multipart_always_500_aborts_and_leaves_the_path_pending() {
    let s = server();
    let proxy = Proxy::start(s.port, |req: &Req| {
        if req.is_complete_multipart() {
            Action::Respond(s3_error(500, "Internal Server Error", "InternalError", &[]))
        } else {
            Action::Forward
        }
    });
    let paths = vec![big_path()];
    let env = Env::new("complete500", &s);
    let url = proxy.url(BUCKET, &format!("{QUICK}{MULTIPART}"));
    let (out, took) = env.hook(&url, &paths);
    eprintln!("complete500: hook took {took:?}");
    assert_hook_failed_softly(&out, &paths);
    assert!(
        stderr(&out).contains("CompleteMultipartUpload"),
        "{}",
        stderr(&out)
    );
    let reqs = proxy.requests();
    let completes = reqs.iter().filter(|r| r.is_complete_multipart()).count();
    assert_eq!(completes, 3, "retry-attempts=3 bounds the attempts");
    assert!(reqs
        .iter()
        .any(|r| r.method == "DELETE" && r.target.contains("uploadId=")));
    let (cached, pending) = check_all(&s, BUCKET, &paths, &env.pending());
    assert!(cached.is_empty() && pending.contains(&paths[0]));
}

#[test]
fn stalled_server_times_out_in_bounded_time() {
    let s = server();
    // Every request: accepted, then silence.
    let proxy = Proxy::start(s.port, |_: &Req| Action::Stall);
    // More paths than HEADs in flight (at most 32), so some are never tried.
    let paths = small_paths("stall", 40);
    let env = Env::new("stall", &s);
    let url = proxy.url(BUCKET, "&connect-timeout=1&io-timeout=2&retry-attempts=2");
    let (out, took) = env.hook(&url, &paths);
    eprintln!("stall: hook took {took:?}");
    assert_hook_failed_softly(&out, &paths);
    let err = stderr(&out);
    assert!(err.contains("timed out"), "{err}");
    // Once one request has run out of attempts, the others are not tried: the
    // hook waits out one request's timeouts per thread, not one per path.
    assert!(err.contains("not tried"), "{err}");
    let n = proxy.requests().len();
    assert!(
        n < paths.len() * 2,
        "{n} requests for {} paths",
        paths.len()
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    check_all(&s, BUCKET, &paths, &env.pending());
    assert_eq!(env.pending().len(), paths.len());
}

#[test]
fn stall_on_the_nar_upload_times_out_and_the_path_is_pending() {
    let s = server();
    let proxy = Proxy::start(s.port, |req: &Req| {
        if req.method == "PUT" && req.is_nar() {
            Action::Stall
        } else {
            Action::Forward
        }
    });
    let paths = small_paths("stallnar", 1);
    let env = Env::new("stallnar", &s);
    let url = proxy.url(BUCKET, "&connect-timeout=1&io-timeout=2&retry-attempts=2");
    let (out, took) = env.hook(&url, &paths);
    eprintln!("stall on NAR: hook took {took:?}");
    assert_hook_failed_softly(&out, &paths);
    assert!(took < Duration::from_secs(60), "{took:?}");
    let (cached, _) = check_all(&s, BUCKET, &paths, &env.pending());
    assert!(cached.is_empty());
}

#[test]
fn sigkill_mid_upload_then_retry_completes() {
    let s = server();
    let stall = Arc::new(AtomicBool::new(true));
    let st = stall.clone();
    let proxy = Proxy::start(s.port, move |req: &Req| {
        if st.load(Ordering::SeqCst) && req.is_upload_part() && req.target.contains("partNumber=2")
        {
            Action::Stall
        } else {
            Action::Forward
        }
    });
    let paths = vec![big_path(), small_paths("sigkill", 1).remove(0)];
    let env = Env::new("sigkill", &s);
    let url = proxy.url(BUCKET, &format!("&io-timeout=60{MULTIPART}"));
    let mut c = env.narpush();
    c.env("NARPUSH_TO", &url)
        .env("OUT_PATHS", paths.join(" "))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let reached = proxy.wait_for(Duration::from_secs(120), |seen| seen.stalled > 0);
    assert!(child.try_wait().unwrap().is_none(), "narpush exited early");
    assert!(reached, "never reached part 2");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The hook wrote its outputs to the pending list before pushing.
    let pending = env.pending();
    assert!(pending.contains(&paths[0]), "{pending:?}");
    // Nothing half-done is visible through a narinfo.
    let cached = common::cachecheck::check_bucket(&s, BUCKET);
    assert!(!cached.contains(&paths[0]));
    // The killed process could not abort its multipart upload; its journal entry
    // (STATE/uploads) lets the next run do it.
    let orphans = s.pending_uploads();
    assert!(!orphans.is_empty(), "the killed upload is still open");
    assert!(env
        .state
        .join("uploads")
        .read_dir()
        .unwrap()
        .next()
        .is_some());

    stall.store(false, Ordering::SeqCst);
    let (out, _) = env.retry(&url);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(env.pending().is_empty(), "{:?}", env.pending());
    let cached = common::cachecheck::check_bucket(&s, BUCKET);
    for p in &paths {
        assert!(cached.contains(p), "{p} pushed by retry");
    }
    assert_eq!(
        s.pending_uploads(),
        Vec::<String>::new(),
        "the retry aborted the killed run's upload and left none of its own"
    );
    assert!(env
        .state
        .join("uploads")
        .read_dir()
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn wrong_credentials_fail_fast_without_a_retry_storm() {
    let s = server();
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let paths = small_paths("wrongcreds", 3);
    let mut env = Env::new("wrongcreds", &s);
    env.secret_key = "not-the-secret-at-all".into();
    let url = proxy.url(BUCKET, "");
    let (out, took) = env.hook(&url, &paths);
    eprintln!("wrong credentials: hook took {took:?}");
    assert_hook_failed_softly(&out, &paths);
    let err = stderr(&out);
    assert!(
        err.contains("403") && err.contains("check the"),
        "names the status and what to check: {err}"
    );
    let n = proxy.requests().len();
    assert!(
        n <= paths.len() + 2,
        "{n} requests for {} paths",
        paths.len()
    );
    assert_eq!(env.pending().len(), 3);
    check_all(&s, BUCKET, &paths, &env.pending());
}

#[test]
fn unwritable_state_dir_is_an_error_only_when_a_path_must_be_recorded() {
    let s = server();
    let paths = small_paths("statedir", 1);
    let mut env = Env::new("statedir", &s);
    let file = env.dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    env.state = file.join("state");

    // The push works: exit 0 (a warning says the state dir is unusable).
    let (out, _) = env.hook(&s.url(BUCKET), &paths);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(common::cachecheck::check_bucket(&s, BUCKET).contains(&paths[0]));

    // The push fails and the path cannot be recorded: loud, non-zero.
    let other = small_paths("statedir2", 1);
    let url = format!(
        "s3://{BUCKET}?endpoint=127.0.0.1:{}&scheme=http&retry-attempts=1",
        refused_port()
    );
    let (out, _) = env.hook(&url, &other);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NOT recorded"), "{err}");
    assert!(err.contains(&env.state.display().to_string()), "{err}");
}

#[test]
fn sixteen_hooks_at_once_over_a_lossy_link() {
    let s = server();
    // Close about 10% of requests' connections without an answer.
    let dropped =
        |i: usize| ((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32).is_multiple_of(10);
    let proxy = Proxy::start(s.port, move |req: &Req| {
        if dropped(req.index) {
            Action::Close
        } else {
            Action::Forward
        }
    });
    let paths = small_paths("sixteen", 8);
    let url = proxy.url(BUCKET, QUICK);
    let env = Env::new("sixteen", &s);
    let outs: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let mine: Vec<String> = (0..3).map(|k| paths[(i + k * 3) % 8].clone()).collect();
                let (env, url) = (&env, &url);
                sc.spawn(move || env.hook(url, &mine))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let worst = outs.iter().map(|(_, t)| *t).max().unwrap();
    let reqs = proxy.requests();
    let closed = reqs.iter().filter(|r| dropped(r.index)).count();
    eprintln!(
        "sixteen hooks: worst {worst:?}, {} requests, {closed} closed unanswered",
        reqs.len()
    );
    assert!(closed > 0, "the link was lossy");
    for (out, _) in &outs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let (cached, pending) = check_all(&s, BUCKET, &paths, &env.pending());
    eprintln!(
        "sixteen hooks: {} cached, {} pending",
        cached.len(),
        pending.len()
    );
    assert!(worst < Duration::from_secs(120));
}

#[test]
fn the_bucket_check_fails_on_a_bucket_it_cannot_read() {
    let s = server();
    assert!(check_bucket(&s, BUCKET).is_empty());
    let r = std::panic::catch_unwind(|| check_bucket(&s, "never-created"));
    let msg = r.expect_err("a bucket that cannot be read passed as empty");
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("cannot read bucket directory"), "{msg}");
}

#[test]
fn a_list_that_cannot_be_read_fails_instead_of_reading_as_empty() {
    let dir = common::s3server::temp_dir("read-if-exists");
    assert_eq!(common::read_if_exists(&dir.join("pending")), "");
    // A directory where the pending list should be: unreadable, not empty.
    std::fs::create_dir(dir.join("pending")).unwrap();
    let r = std::panic::catch_unwind(|| common::read_if_exists(&dir.join("pending")));
    let _ = std::fs::remove_dir_all(&dir);
    let msg = r.expect_err("an unreadable list passed as empty");
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(
        msg.starts_with("cannot read ") && msg.contains("pending"),
        "{msg}"
    );
}

#[test]
fn a_push_of_200_paths_opens_at_most_one_connection_per_request_in_flight() {
    let s = server();
    let proxy = Proxy::start(s.port, |_: &Req| Action::Forward);
    let paths = small_paths("reuse", 200);
    let env = Env::new("reuse", &s);
    let mut c = env.narpush();
    // 8 jobs: 8 uploads at once, and the existence checks (HEADs) use 8 threads.
    c.args(["--to", &proxy.url(BUCKET, ""), "--jobs", "8"])
        .args(&paths);
    let (out, _) = common::cachecheck::timed(&mut c);
    assert!(out.status.success(), "{}", stderr(&out));
    let (cached, _) = check_all(&s, BUCKET, &paths, &env.pending());
    assert_eq!(cached.len(), paths.len());
    let reqs = proxy.requests();
    let conns: std::collections::BTreeSet<usize> = reqs.iter().map(|r| r.conn).collect();
    // HEAD, NAR and narinfo per path (and nix-cache-info): hundreds of requests
    // over at most one connection per request in flight (without reuse: one each).
    assert!(reqs.len() >= 3 * paths.len(), "{} requests", reqs.len());
    assert!(
        conns.len() <= 8,
        "{} connections for {} requests",
        conns.len(),
        reqs.len()
    );
    common::proxy::assert_signs_only_what_it_must(&reqs);
}
