//! The queueing hook and its background pusher, with real `nix-build` (Nix 2.8,
//! whose empty `OUT_PATHS` makes the hook queue `DRV_PATH`) and the real S3 server,
//! frozen with SIGSTOP or stopped where a test needs an outage: the build never
//! waits for the upload, the pusher drains the queue in reference order, one pusher
//! at a time, a SIGKILLed pusher loses nothing, `flush`, `status`, `--exclude`,
//! `--wait`, and `retry` keeping a derivation Nix could not resolve for a moment.
//! Every wait has a deadline.

mod common;

use common::cache::{cached_paths, check_invariants, check_upload_order, closure, in_root};
use common::nix::{
    add_file, graph_expr, narpush, nix_keypair, nonce, realise_from, stderr, stdout, HttpServer,
    NIX_OPTS,
};
use common::proxy::{Action, Proxy};
use common::s3server::{temp_dir, S3Server};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variables that must not leak from the test into a hook.
const SCRUB: &[&str] = &[
    "OUT_PATHS",
    "DRV_PATH",
    "NARPUSH_CONFIG",
    "NARPUSH_TO",
    "NARPUSH_STATE_DIR",
    "NARPUSH_WAIT",
    "NARPUSH_SPAWN_PUSHER",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

struct Setup {
    dir: PathBuf,
    s3: S3Server,
    public: String,
    config: PathBuf,
    state: PathBuf,
}

/// A server with bucket `cache`, a Nix key, credentials and a config naming them
/// (the hook queues: no `wait`), plus `extra` lines; `to` overrides the cache URL.
fn setup(what: &str, extra: &str) -> Setup {
    setup_on(what, extra, S3Server::start(), None)
}

/// [`setup`] with a given server, reached at `to` (e.g. through a proxy).
fn setup_on(what: &str, extra: &str, s3: S3Server, to: Option<String>) -> Setup {
    let dir = temp_dir(what);
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-queue-1");
    let creds = dir.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let config = dir.join("narpush.toml");
    let url = to.unwrap_or_else(|| s3.url("cache"));
    std::fs::write(
        &config,
        format!(
            "to = \"{url}\"\nkey-file = \"{}\"\ncredentials-file = \"{}\"\nstate-dir = \"{}\"\n\
             give-up-after = \"3min\"\n{extra}",
            sec.display(),
            creds.display(),
            state.display()
        ),
    )
    .unwrap();
    Setup {
        dir,
        s3,
        public,
        config,
        state,
    }
}

/// narpush with the test's config and queueing left on (no NARPUSH_WAIT).
fn np(s: &Setup) -> Command {
    let mut c = narpush();
    c.env_remove("NARPUSH_WAIT")
        .env("NARPUSH_CONFIG", &s.config);
    c
}

/// Run `c`, killing it if it has not finished within `limit`.
fn output_within(mut c: Command, limit: Duration, what: &str) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}:\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pending(state: &Path) -> BTreeSet<String> {
    common::read_if_exists(&state.join("pending"))
        .lines()
        .map(String::from)
        .collect()
}

fn status_json(s: &Setup) -> serde_json::Value {
    let out = output_within(
        {
            let mut c = np(s);
            c.args(["status", "--json"]);
            c
        },
        Duration::from_secs(30),
        "narpush status --json",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("status --json printed {:?}: {e}", stdout(&out)))
}

/// The pid of the running pusher, from `status --json`.
fn pusher_pid(s: &Setup) -> Option<u64> {
    status_json(s)["pusher"]["pid"].as_u64()
}

/// Wait until the queue is empty and no pusher runs.
fn wait_drained(s: &Setup, limit: Duration) {
    wait_until(limit, "queue drained and pusher gone", || {
        pending(&s.state).is_empty() && pusher_pid(s).is_none()
    });
}

fn log(s: &Setup) -> String {
    common::read_if_exists(&s.state.join("log"))
}

/// `nix-build -A top` of a fresh graph with narpush as post-build-hook.
fn build_with_hook(s: &Setup, limit: Duration) -> (String, BTreeSet<String>, Output) {
    let file = s.dir.join("default.nix");
    std::fs::write(&file, graph_expr(&nonce("queue"))).unwrap();
    let mut c = Command::new("nix-build");
    c.arg(&file)
        .args(["-A", "top", "--no-out-link"])
        .args(NIX_OPTS)
        .arg("--option")
        .arg("post-build-hook")
        .arg(env!("CARGO_BIN_EXE_narpush"));
    for v in SCRUB {
        c.env_remove(v);
    }
    c.env("NARPUSH_CONFIG", &s.config);
    let out = output_within(c, limit, "nix-build with narpush as hook");
    assert!(
        out.status.success(),
        "nix-build failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let top = stdout(&out).trim().to_string();
    let built = closure(&[&top]);
    assert_eq!(built.len(), 4, "{built:?}");
    (top, built, out)
}

fn substitute(s: &Setup, top: &str) {
    let http = HttpServer::serve(&s.s3.bucket_dir("cache"));
    let root = common::nix::fresh_root("queue-client");
    let out = realise_from(&http.url(), &root, &[top], &s.public);
    assert!(
        out.status.success(),
        "substituting from the bucket failed:\n{}",
        stderr(&out)
    );
    assert!(in_root(&root, top).join("run").symlink_metadata().is_ok());
}

/// The server frozen (SIGSTOP) during the whole build: the build finishes anyway
/// (the hook's pipes are closed; its pusher is stuck on the server, not the build),
/// and after SIGCONT the pusher drains the queue into a cache Nix substitutes from.
#[test]
fn build_with_the_server_frozen_finishes_and_the_pusher_drains_after_sigcont() {
    let s = setup("queue-frozen", "");
    s.s3.pause();
    let (top, built, _) = build_with_hook(&s, Duration::from_secs(120));
    // Built, and the pusher is still stuck on the frozen server.
    wait_until(Duration::from_secs(30), "a pusher runs", || {
        pusher_pid(&s).is_some()
    });
    let pid = pusher_pid(&s).unwrap();
    assert!(cached_paths(&s.s3.bucket_dir("cache")).is_empty());
    let st = status_json(&s);
    assert!(st["queued"].as_u64().unwrap() >= 1, "{st}");

    s.s3.resume();
    wait_drained(&s, Duration::from_secs(240));
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), built, "log:\n{}", log(&s));
    assert_eq!(check_invariants(&bucket), 4);
    check_upload_order(&bucket);
    substitute(&s, &top);
    let log = log(&s);
    assert!(log.contains(&format!(" pusher {pid} started")), "{log}");
    for p in &built {
        assert_eq!(
            log.matches(&format!(" pushed {p}: ")).count(),
            1,
            "{p} pushed once:\n{log}"
        );
    }
}

/// 16 hooks at once while a pusher is stuck on a frozen server: each only queues,
/// none is lost, each path goes up once, and pushers never overlap (the log's
/// start and end lines alternate).
#[test]
fn sixteen_concurrent_hooks_while_a_pusher_runs() {
    let s = setup("queue-16", "");
    let first = add_file(&nonce("first"), b"first\n");
    s.s3.pause();
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", &first);
            c
        },
        Duration::from_secs(30),
        "the first hook",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_until(
        Duration::from_secs(30),
        "the first hook started a pusher",
        || pusher_pid(&s).is_some(),
    );
    let pid = pusher_pid(&s).unwrap();
    let paths: Vec<String> = (0..16)
        .map(|i| add_file(&nonce(&format!("conc{i}")), format!("{i}\n").as_bytes()))
        .collect();
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            np(&s)
                .env("OUT_PATHS", p)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("narpush: queued 1 path; pusher "),
            "{}",
            stdout(&out)
        );
    }
    let mut all: BTreeSet<String> = paths.iter().cloned().collect();
    all.insert(first);
    assert_eq!(pending(&s.state), all, "every hook queued its path");
    assert_eq!(pusher_pid(&s), Some(pid), "still the one pusher");

    s.s3.resume();
    wait_drained(&s, Duration::from_secs(240));
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), all);
    check_invariants(&bucket);
    let log = log(&s);
    for p in &all {
        assert_eq!(
            log.matches(&format!(" pushed {p}: ")).count(),
            1,
            "{p} pushed once:\n{log}"
        );
    }
    let mut running = false;
    for l in log.lines().filter(|l| l.contains(" pusher ")) {
        if l.ends_with(" started") {
            assert!(!running, "two pushers at once:\n{log}");
            running = true;
        } else if l.contains(" done: queue empty") || l.contains("giving up") {
            running = false;
        }
    }
}

/// SIGKILL the pusher in the middle of a multipart upload: the next hook starts a
/// new pusher, which aborts the orphaned upload and pushes everything.
#[test]
fn sigkilled_pusher_loses_nothing() {
    let s3 = S3Server::start();
    let stall = Arc::new(AtomicBool::new(true));
    let flag = stall.clone();
    // Hold the second part of any multipart upload while `stall` is set.
    let proxy = Proxy::start(s3.port, move |r| {
        if flag.load(Ordering::SeqCst) && r.is_upload_part() && r.target.contains("partNumber=2") {
            Action::Stall
        } else {
            Action::Forward
        }
    });
    let url = proxy.url("cache", "");
    let s = setup_on("queue-kill", "compression = \"none\"\n", s3, Some(url));

    let mut data = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = add_file(&nonce("big"), &data);
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", &big);
            c
        },
        Duration::from_secs(30),
        "hook of the big path",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        proxy.wait_for(Duration::from_secs(120), |seen| seen.stalled >= 1),
        "the pusher never reached part 2; log:\n{}",
        log(&s)
    );
    let pid = pusher_pid(&s).expect("a pusher runs");
    assert!(!s.s3.pending_uploads().is_empty(), "mid-upload");
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until(Duration::from_secs(30), "the killed pusher is gone", || {
        pusher_pid(&s).is_none()
    });
    assert!(
        !s.s3.pending_uploads().is_empty(),
        "the killed pusher left a multipart upload"
    );
    assert!(pending(&s.state).contains(&big));

    stall.store(false, Ordering::SeqCst);
    let small = add_file(&nonce("small"), b"small\n");
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", &small);
            c
        },
        Duration::from_secs(30),
        "the next hook",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_drained(&s, Duration::from_secs(240));
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), BTreeSet::from([big, small]));
    check_invariants(&bucket);
    assert!(
        s.s3.pending_uploads().is_empty(),
        "orphaned upload not aborted: {:?}\nlog:\n{}",
        s.s3.pending_uploads(),
        log(&s)
    );
}

/// `flush` with the server down: exit 1 within its timeout, naming what is left
/// and why; `status` says so and fails `--max-age`; with the server up: exit 0 and
/// an empty queue; `status` then shows the pushed path.
#[test]
fn flush_and_status_with_the_server_down_then_up() {
    let mut s = setup("queue-flush", "spawn-pusher = false\n");
    let path = add_file(&nonce("flush"), b"flush me\n");
    s.s3.stop();
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", &path);
            c
        },
        Duration::from_secs(30),
        "hook",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("queued 1 path; the narpush-pusher service pushes them"),
        "{}",
        stdout(&out)
    );
    assert!(
        s.state.join("pusher.wake").exists(),
        "the hook left a wake-up"
    );
    assert_eq!(pending(&s.state), BTreeSet::from([path.clone()]));

    // status: one queued, no pusher.
    let st = status_json(&s);
    assert_eq!(st["queued"], 1, "{st}");
    assert!(st["pusher"].is_null(), "{st}");
    let text = output_within(
        {
            let mut c = np(&s);
            c.arg("status");
            c
        },
        Duration::from_secs(30),
        "status",
    );
    assert_eq!(text.status.code(), Some(0));
    assert!(
        stdout(&text).contains("queue: 1 entries"),
        "{}",
        stdout(&text)
    );
    assert!(
        stdout(&text).contains("pusher: not running"),
        "{}",
        stdout(&text)
    );
    std::thread::sleep(Duration::from_millis(2100));
    let old = output_within(
        {
            let mut c = np(&s);
            c.args(["status", "--max-age", "1s"]);
            c
        },
        Duration::from_secs(30),
        "status --max-age",
    );
    assert_eq!(old.status.code(), Some(1), "{}", stdout(&old));
    assert!(
        stderr(&old).contains("longer than --max-age"),
        "{}",
        stderr(&old)
    );

    let down = output_within(
        {
            let mut c = np(&s);
            c.args(["flush", "--timeout", "6s"]);
            c
        },
        Duration::from_secs(90),
        "flush with the server down",
    );
    assert_eq!(down.status.code(), Some(1), "{}", stderr(&down));
    assert!(
        stderr(&down).contains(&format!("narpush: left {path}: ")),
        "{}",
        stderr(&down)
    );
    assert_eq!(pending(&s.state), BTreeSet::from([path.clone()]));
    assert!(log(&s).contains(" outage "), "{}", log(&s));
    assert!(
        !log(&s).contains(&s.s3.secret_key),
        "the secret key is in STATE/log"
    );

    s.s3.restart();
    let up = output_within(
        {
            let mut c = np(&s);
            c.args(["flush", "--timeout", "2min"]);
            c
        },
        Duration::from_secs(180),
        "flush with the server up",
    );
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&up),
        stderr(&up)
    );
    assert!(stdout(&up).contains("narpush: flush: queue empty"));
    assert!(pending(&s.state).is_empty());
    assert!(
        !s.state.join("pusher.wake").exists(),
        "flush took the wake-up"
    );
    assert_eq!(
        cached_paths(&s.s3.bucket_dir("cache")),
        BTreeSet::from([path.clone()])
    );
    let st = status_json(&s);
    assert_eq!(st["queued"], 0, "{st}");
    let last = st["last"].as_array().unwrap();
    assert!(
        last.iter()
            .any(|e| e["kind"] == "pushed" && e["text"].as_str().unwrap().starts_with(&path)),
        "{st}"
    );
    // Nothing queued: flush is a no-op that succeeds.
    let again = output_within(
        {
            let mut c = np(&s);
            c.arg("flush");
            c
        },
        Duration::from_secs(60),
        "flush of an empty queue",
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
}

/// `--exclude`: a matching output is not queued; a matching dependency is not
/// pushed; a matching path given by hand is reported and skipped.
#[test]
fn exclude_keeps_paths_out_of_the_queue_and_the_cache() {
    let s = setup("queue-exclude", "exclude = [\"*-skipme\"]\n");
    let skipped = add_file(&format!("{}-skipme", nonce("x")), b"no\n");
    let kept = add_file(&nonce("kept"), b"yes\n");
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", format!("{skipped} {kept}"))
                .env("NARPUSH_SPAWN_PUSHER", "0");
            c
        },
        Duration::from_secs(30),
        "hook",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("skipped {skipped}: excluded by '*-skipme'")),
        "{}",
        stdout(&out)
    );
    assert_eq!(pending(&s.state), BTreeSet::from([kept.clone()]));

    // A graph pushed by hand, excluding its dependency `narpush-dep`.
    let d = s.dir.join("g");
    std::fs::create_dir_all(&d).unwrap();
    let expr = graph_expr(&nonce("excl"));
    let top = common::nix::build(&d, &expr, "top", &[], &[]).remove(0);
    let dep = common::nix::build(&d, &expr, "dep", &[], &[]).remove(0);
    let by_hand = output_within(
        {
            let mut c = np(&s);
            c.args(["push", "--exclude", "narpush-dep", "--exclude", "*-skipme"])
                .args([&top, &skipped]);
            c
        },
        Duration::from_secs(120),
        "push --exclude",
    );
    assert_eq!(by_hand.status.code(), Some(0), "{}", stderr(&by_hand));
    assert!(
        stderr(&by_hand).contains(&format!("skipped {skipped}: excluded by")),
        "{}",
        stderr(&by_hand)
    );
    let cached = cached_paths(&s.s3.bucket_dir("cache"));
    let mut want = closure(&[&top]);
    want.remove(&dep);
    assert_eq!(cached, want);
    assert!(!cached.contains(&skipped));
}

/// `--wait` keeps the old hook: the path is in the cache when the hook returns,
/// nothing is queued, and no pusher was started.
#[test]
fn wait_pushes_before_the_hook_returns() {
    let s = setup("queue-wait", "");
    let path = add_file(&nonce("wait"), b"waited\n");
    let out = output_within(
        {
            let mut c = np(&s);
            c.arg("--wait").env("OUT_PATHS", &path);
            c
        },
        Duration::from_secs(120),
        "hook --wait",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("pushed {path}: ")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("narpush: 1 pushed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        cached_paths(&s.s3.bucket_dir("cache")),
        BTreeSet::from([path])
    );
    assert!(pending(&s.state).is_empty());
    assert!(
        !s.state.join("pusher.lock").exists(),
        "no pusher was involved"
    );
}

/// `retry` when Nix cannot resolve a queued derivation's outputs for a moment
/// (a `nix-store` that fails, as when the daemon is restarting): the entry stays;
/// with Nix answering again, the next retry pushes its outputs.
#[test]
fn retry_keeps_a_derivation_nix_cannot_resolve_now() {
    let s = setup("queue-transient", "spawn-pusher = false\n");
    let d = s.dir.join("g");
    std::fs::create_dir_all(&d).unwrap();
    let expr = graph_expr(&nonce("transient"));
    let top = common::nix::build(&d, &expr, "top", &[], &[]).remove(0);
    let drv = common::nix::ok(
        Command::new("nix-instantiate")
            .arg(d.join("default.nix"))
            .args(["-A", "top"]),
    )
    .trim()
    .to_string();
    // As Nix 2.8's hook hands it over: empty OUT_PATHS, the derivation queued.
    let out = output_within(
        {
            let mut c = np(&s);
            c.env("OUT_PATHS", "").env("DRV_PATH", &drv);
            c
        },
        Duration::from_secs(30),
        "hook",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(pending(&s.state), BTreeSet::from([drv.clone()]));

    // A PATH whose nix-store fails the way an unreachable daemon makes it fail.
    let bin = s.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real_nix = common::nix::ok(Command::new("sh").args(["-c", "command -v nix"]));
    std::os::unix::fs::symlink(real_nix.trim(), bin.join("nix")).unwrap();
    std::fs::write(
        bin.join("nix-store"),
        "#!/bin/sh\necho \"error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': Connection refused\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("nix-store"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path_var = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let broken = output_within(
        {
            let mut c = np(&s);
            c.arg("retry").env("PATH", &path_var);
            c
        },
        Duration::from_secs(60),
        "retry with nix-store failing",
    );
    assert_eq!(broken.status.code(), Some(1), "{}", stderr(&broken));
    assert!(
        stderr(&broken).contains(&format!("keeping {drv}")),
        "{}",
        stderr(&broken)
    );
    assert_eq!(pending(&s.state), BTreeSet::from([drv.clone()]));

    let fine = output_within(
        {
            let mut c = np(&s);
            c.arg("retry");
            c
        },
        Duration::from_secs(120),
        "retry",
    );
    assert_eq!(fine.status.code(), Some(0), "{}", stderr(&fine));
    assert!(pending(&s.state).is_empty());
    assert_eq!(cached_paths(&s.s3.bucket_dir("cache")), closure(&[&top]));
}
