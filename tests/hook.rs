//! narpush as Nix's post-build hook: real `nix-build` runs the real binary (or the
//! installed `narpush-hook` wrapper) with a config file, against a real S3 server;
//! a fresh store then substitutes the result over HTTP with signatures required.
//! Nix 2.8.0 passes an empty `OUT_PATHS` (NixOS/nix#6446), so these builds prove
//! the fallback to `DRV_PATH`'s outputs.

mod common;

use common::cache::{cached_paths, check_invariants, closure, in_root};
use common::nix::{
    graph_expr, narpush, nix_keypair, nonce, realise_from, stderr, stdout, HttpServer, NIX_OPTS,
};
use common::s3server::{temp_dir, S3Server};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Environment variables that must not leak from the test into a hook.
const SCRUB: &[&str] = &[
    "OUT_PATHS",
    "DRV_PATH",
    "NARPUSH_CONFIG",
    "NARPUSH_TO",
    "NARPUSH_KEY_FILE",
    "NARPUSH_STATE_DIR",
    "NARPUSH_CREDENTIALS_FILE",
    "NARPUSH_ENV_FILE",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// These tests check the synchronous hook (`wait = true`, what `--wait` keeps);
/// the queueing hook and its pusher are tested in tests/queue.rs.
const HOOK_MODE: &str = "wait = true\n";

struct Setup {
    dir: PathBuf,
    s3: S3Server,
    public: String,
    config: PathBuf,
    state: PathBuf,
}

/// A server with bucket `cache`, a Nix key, an INI credentials file and a config
/// naming them all (plus `extra` lines).
fn setup(what: &str, extra: &str) -> Setup {
    let dir = temp_dir(what);
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-hook-1");
    let creds = dir.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let config = dir.join("narpush.toml");
    std::fs::write(
        &config,
        format!(
            "to = \"{}\"\nkey-file = \"{}\"\ncredentials-file = \"{}\"\nstate-dir = \"{}\"\n{HOOK_MODE}{extra}",
            s3.url("cache"),
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

/// `nix-build -A top` of a fresh graph with `hook` as post-build-hook and
/// `NARPUSH_CONFIG=config`; returns (top, every path built) and the output.
fn build_with_hook(
    dir: &Path,
    hook: &Path,
    envs: &[(&str, &Path)],
) -> (String, BTreeSet<String>, Output) {
    let file = dir.join("default.nix");
    std::fs::write(&file, graph_expr(&nonce("hook"))).unwrap();
    let mut c = Command::new("nix-build");
    c.arg(&file)
        .args(["-A", "top", "--no-out-link"])
        .args(NIX_OPTS)
        .arg("--option")
        .arg("post-build-hook")
        .arg(hook);
    for v in SCRUB {
        c.env_remove(v);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run nix-build");
    assert!(
        out.status.success(),
        "nix-build with the hook failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let top = stdout(&out).trim().to_string();
    let built = closure(&[&top]);
    assert_eq!(built.len(), 4, "dep, app out and doc, top: {built:?}");
    (top, built, out)
}

fn substitute(dir: &Path, top: &str, public: &str) {
    let http = HttpServer::serve(dir);
    let root = common::nix::fresh_root("hook-client");
    let out = realise_from(&http.url(), &root, &[top], public);
    assert!(
        out.status.success(),
        "nix-store --realise from the bucket failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(in_root(&root, top).join("run").symlink_metadata().is_ok());
}

fn pending(state: &Path) -> BTreeSet<String> {
    common::read_if_exists(&state.join("pending"))
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn nix_build_hook_pushes_exactly_the_built_paths() {
    let s = setup("hook-build", "");
    let hook = PathBuf::from(env!("CARGO_BIN_EXE_narpush"));
    let (top, built, out) = build_with_hook(&s.dir, &hook, &[("NARPUSH_CONFIG", &s.config)]);
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), built, "{}", stderr(&out));
    assert_eq!(check_invariants(&bucket), 4);
    assert!(pending(&s.state).is_empty(), "{:?}", pending(&s.state));
    substitute(&bucket, &top, &s.public);
}

#[test]
fn nix_build_hook_with_server_down_records_pending_then_retry_pushes() {
    let mut s = setup("hook-down", "");
    s.s3.stop();
    let hook = PathBuf::from(env!("CARGO_BIN_EXE_narpush"));
    let (top, built, out) = build_with_hook(&s.dir, &hook, &[("NARPUSH_CONFIG", &s.config)]);
    assert_eq!(
        pending(&s.state),
        built,
        "pending list after a build with the server down; nix-build stderr:\n{}",
        stderr(&out)
    );
    let bucket = s.s3.bucket_dir("cache");
    assert!(cached_paths(&bucket).is_empty());

    // A retry while the server is still down fails and keeps the list.
    let early = narpush()
        .arg("retry")
        .env("NARPUSH_CONFIG", &s.config)
        .output()
        .unwrap();
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    assert_eq!(pending(&s.state), built);

    s.s3.restart();
    let retry = narpush()
        .arg("retry")
        .env("NARPUSH_CONFIG", &s.config)
        .output()
        .unwrap();
    assert!(
        retry.status.success(),
        "narpush retry: {}\n{}",
        stdout(&retry),
        stderr(&retry)
    );
    assert!(pending(&s.state).is_empty(), "{:?}", pending(&s.state));
    assert_eq!(cached_paths(&bucket), built);
    assert_eq!(check_invariants(&bucket), 4);
    substitute(&bucket, &top, &s.public);
}

#[test]
fn hook_run_directly_pushes_valid_paths_and_reports_junk() {
    let s = setup("hook-junk", "");
    let path = common::nix::add_file(&nonce("junk"), b"a valid path\n");
    // Not store paths at all, and a well-formed store path that is not valid here.
    let missing = "/nix/store/00000000000000000000000000000000-not-built";
    let junk = format!("/nix/store/not-a-store-path relative/thing {missing}");
    let out = narpush()
        .env("NARPUSH_CONFIG", &s.config)
        .env("OUT_PATHS", format!("{junk} {path}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("not-a-store-path"), "{err}");
    assert!(err.contains("relative/thing"), "{err}");
    assert!(err.contains(missing), "{err}");
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), BTreeSet::from([path.clone()]));
    assert!(pending(&s.state).is_empty(), "{:?}", pending(&s.state));
}

#[test]
fn strict_hook_with_server_down_exits_non_zero() {
    let mut s = setup("hook-strict", "");
    s.s3.stop();
    let path = common::nix::add_file(&nonce("strict"), b"strict\n");
    let out = narpush()
        .arg("--strict")
        .env("NARPUSH_CONFIG", &s.config)
        .env("OUT_PATHS", &path)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&path), "{}", stderr(&out));

    // The same in the config file.
    let s = setup("hook-strict-file", "strict = true\n");
    let mut s3 = s.s3;
    s3.stop();
    let out = narpush()
        .env("NARPUSH_CONFIG", &s.config)
        .env("OUT_PATHS", &path)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));

    // Without strict the hook exits 0 and records the path.
    let s = setup("hook-lenient", "");
    let mut s3 = s.s3;
    s3.stop();
    let out = narpush()
        .env("NARPUSH_CONFIG", &s.config)
        .env("OUT_PATHS", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(pending(&s.state), BTreeSet::from([path]));
}

/// `make install PREFIX=<tmp>`: the Makefile's real install recipe, with the binary
/// under test standing in for the release build (`-o build` skips `cargo build
/// --release`, which with fat LTO would take minutes on a small machine).
fn make_install(prefix: &Path, scratch: &Path) {
    let target = scratch.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_narpush"),
        target.join("release/narpush"),
    )
    .unwrap();
    let out = Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["-o", "build", "install"])
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("TARGET_DIR={}", target.display()))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn installed_hook_wrapper_pushes_a_build() {
    let s = setup("hook-wrapper", "");
    let prefix = s.dir.join("prefix");
    make_install(&prefix, &s.dir);
    let hook = prefix.join("libexec/narpush/narpush-hook");
    assert!(prefix.join("bin/narpush").is_file());
    for unit in [
        "narpush-retry.timer",
        "narpush-retry.service",
        "narpush-pusher.service",
        "narpush-pusher.path",
    ] {
        assert!(
            prefix.join("share/narpush/systemd").join(unit).is_file(),
            "make install did not ship {unit}"
        );
    }
    // Credentials from the wrapper's env file, not the config.
    let config = s.dir.join("wrapper.toml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("credentials-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    let env_file = s.dir.join("env");
    std::fs::write(
        &env_file,
        format!(
            "# narpush-hook environment\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY='{}'\nNARPUSH_CONFIG={}\n",
            s.s3.access_key,
            s.s3.secret_key,
            config.display()
        ),
    )
    .unwrap();
    let (top, built, out) = build_with_hook(&s.dir, &hook, &[("NARPUSH_ENV_FILE", &env_file)]);
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), built, "{}", stderr(&out));
    assert_eq!(check_invariants(&bucket), 4);
    substitute(&bucket, &top, &s.public);
}

#[test]
fn hook_wrapper_without_narpush_does_not_fail_the_build() {
    let dir = temp_dir("hook-wrapper-alone");
    let hook = dir.join("libexec/narpush/narpush-hook");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/narpush-hook"),
        &hook,
    )
    .unwrap();
    let bad_env = dir.join("env");
    std::fs::write(&bad_env, "if then fi (\n").unwrap();
    for env_file in [dir.join("missing-env"), bad_env] {
        let out = Command::new("sh")
            .arg(&hook)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NARPUSH_ENV_FILE", &env_file)
            .env("OUT_PATHS", "/nix/store/x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).contains("narpush-hook: "), "{}", stderr(&out));
    }
}

#[test]
fn hook_that_fails_before_pushing_records_the_derivation_and_retry_pushes_its_outputs() {
    let s = setup("hook-early-failure", "");
    // Built without the hook; then a hook run as Nix 2.8 makes it (empty OUT_PATHS)
    // with a config file it cannot read.
    let expr = graph_expr(&nonce("early"));
    let top = common::nix::build(&s.dir, &expr, "top", &[], &[]).remove(0);
    let drv = common::nix::ok(
        Command::new("nix-instantiate")
            .arg(s.dir.join("default.nix"))
            .args(["-A", "top"]),
    )
    .trim()
    .to_string();
    let bad = s.dir.join("bad.toml");
    std::fs::write(&bad, "to = \n").unwrap();
    let out = narpush()
        .env("NARPUSH_CONFIG", &bad)
        .env("NARPUSH_STATE_DIR", &s.state)
        .env("OUT_PATHS", "")
        .env("DRV_PATH", &drv)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(pending(&s.state), BTreeSet::from([drv.clone()]));

    let retry = narpush()
        .arg("retry")
        .env("NARPUSH_CONFIG", &s.config)
        .output()
        .unwrap();
    assert!(
        retry.status.success(),
        "narpush retry: {}\n{}",
        stdout(&retry),
        stderr(&retry)
    );
    assert!(pending(&s.state).is_empty(), "{:?}", pending(&s.state));
    let bucket = s.s3.bucket_dir("cache");
    assert_eq!(cached_paths(&bucket), closure(&[&top]));
    assert_eq!(check_invariants(&bucket), 4);
    substitute(&bucket, &top, &s.public);
}

#[test]
fn retry_drops_garbage_collected_paths_and_pushes_the_rest() {
    let mut s = setup("hook-gc", "");
    s.s3.stop();
    let keep = common::nix::add_file(&nonce("keep"), b"kept\n");
    let gone = common::nix::add_file(&nonce("gone"), b"collected\n");
    let out = narpush()
        .env("NARPUSH_CONFIG", &s.config)
        .env("OUT_PATHS", format!("{keep} {gone}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        pending(&s.state),
        BTreeSet::from([keep.clone(), gone.clone()])
    );
    common::nix::ok(Command::new("nix-store").args(["--delete", &gone]));

    s.s3.restart();
    let retry = narpush()
        .arg("retry")
        .env("NARPUSH_CONFIG", &s.config)
        .output()
        .unwrap();
    assert!(retry.status.success(), "{}", stderr(&retry));
    assert!(
        stderr(&retry).contains(&format!("dropping {gone}")),
        "{}",
        stderr(&retry)
    );
    assert!(pending(&s.state).is_empty(), "{:?}", pending(&s.state));
    assert_eq!(
        cached_paths(&s.s3.bucket_dir("cache")),
        BTreeSet::from([keep])
    );
}
