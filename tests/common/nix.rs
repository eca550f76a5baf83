//! Real Nix for integration tests: build and add store paths, make keys with
//! `nix key`, copy from a cache into a fresh chroot store with signatures required,
//! serve a directory over HTTP (Nix 2.8 reads a bucket over plain HTTP), and run the
//! narpush binary. No mocks: a missing `nix` fails the test.
#![allow(dead_code)]

use super::s3server::{free_port, temp_dir, wait_for_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Options every Nix invocation here needs: no sandbox or build users (tests run
/// as root in a container), no network substituters.
pub const NIX_OPTS: &[&str] = &[
    "--option",
    "sandbox",
    "false",
    "--option",
    "build-users-group",
    "",
    "--option",
    "substituters",
    "",
    "--option",
    "narinfo-cache-negative-ttl",
    "0",
];

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is Nix installed? run `make deps`)"));
    out
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn nix() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command"])
        .args(NIX_OPTS);
    c
}

/// The narpush binary under test, with a clean environment for its knobs.
pub fn narpush() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_narpush"));
    narpush_env(&mut c);
    c
}

/// Clear narpush's knobs from a command's environment (no config file either).
pub fn narpush_env(c: &mut Command) {
    for v in [
        "OUT_PATHS",
        "DRV_PATH",
        "NARPUSH_CONFIG",
        "NARPUSH_TO",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        c.env_remove(v);
    }
    c.env("NARPUSH_CONFIG", "/dev/null");
    // A hook pushes before it exits, as these tests expect; the queue's own tests
    // (tests/queue.rs) remove this.
    c.env("NARPUSH_WAIT", "1");
}

/// A fresh, unique token for derivations, so each test builds new store paths.
pub fn nonce(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// `nix-store --add` a file with these contents; returns the store path.
pub fn add_file(name: &str, contents: &[u8]) -> String {
    let dir = temp_dir("add");
    let f = dir.join(name);
    std::fs::write(&f, contents).unwrap();
    ok(Command::new("nix-store").arg("--add").arg(&f))
        .trim()
        .to_string()
}

/// A graph of derivations, unique per `tag`: `dep` (a file), `app` with outputs `out`
/// and `doc` where `out` refers to `dep` and to `doc`, and `top` referring to `app`.
pub fn graph_expr(tag: &str) -> String {
    format!(
        r#"let
  sh = "/bin/sh";
  # Nix sets PATH to /path-not-set in a builder; mkdir, ln and chmod come from the host.
  path = "/usr/bin:/bin";
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; builder = sh; args = [ "-c" script ]; tag = "{tag}"; PATH = path; }};
  dep = mk "narpush-dep" "echo dependency-{tag} > $out";
  app = derivation {{
    name = "narpush-app"; system = builtins.currentSystem; builder = sh; tag = "{tag}"; PATH = path;
    outputs = [ "out" "doc" ];
    args = [ "-c" "mkdir -p $out/bin $doc; echo 'the docs' > $doc/README; printf '#!/bin/sh\necho hi from %s\n' ${{dep}} > $out/bin/app; chmod +x $out/bin/app; ln -s $doc/README $out/README" ];
  }};
  top = mk "narpush-top" "mkdir $out; ln -s ${{app}}/bin/app $out/run";
in {{ inherit dep app top; }}
"#
    )
}

/// Write `expr` to a file in `dir` and `nix-build` attribute `attr` (no out link);
/// extra args (e.g. a post-build-hook) are passed through. Returns the output paths.
pub fn build(
    dir: &Path,
    expr: &str,
    attr: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Vec<String> {
    build_with(Command::new("nix-build"), dir, expr, attr, extra, envs)
}

/// [`build`] with another `nix-build` (e.g. Nix 2.26's in its chroot).
pub fn build_with(
    mut c: Command,
    dir: &Path,
    expr: &str,
    attr: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Vec<String> {
    let file = dir.join("default.nix");
    std::fs::write(&file, expr).unwrap();
    c.arg(&file)
        .args(["-A", attr, "--no-out-link"])
        .args(NIX_OPTS)
        .args(extra);
    for (k, v) in envs {
        c.env(k, v);
    }
    ok(&mut c).lines().map(String::from).collect()
}

/// A key pair made by real Nix: (secret key file, public key string).
pub fn nix_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let sec = dir.join(format!("{name}.sec"));
    let sk = ok(nix().args(["key", "generate-secret", "--key-name", name]));
    std::fs::write(&sec, &sk).unwrap();
    let pk = ok(nix()
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(&sec).unwrap()));
    (sec, pk.trim().to_string())
}

/// `nix copy --from CACHE --to ROOT PATHS` into a fresh chroot store, with signatures
/// required and only `trusted_key` trusted. Returns the raw output (callers assert).
pub fn copy_from(cache_url: &str, root: &Path, paths: &[&str], trusted_key: &str) -> Output {
    run(nix()
        .args(["copy", "--from", cache_url, "--to"])
        .arg(root)
        .args(paths)
        .args([
            "--option",
            "require-sigs",
            "true",
            "--option",
            "trusted-public-keys",
            trusted_key,
        ]))
}

/// `nix-store --realise` into a fresh chroot store with only `substituter` (and
/// signatures required): how a client machine substitutes from the bucket.
pub fn realise_from(substituter: &str, root: &Path, paths: &[&str], trusted_key: &str) -> Output {
    realise_with(
        Command::new("nix-store"),
        substituter,
        root,
        paths,
        trusted_key,
    )
}

/// [`realise_from`] with another `nix-store` (e.g. Nix 2.26's in its chroot).
pub fn realise_with(
    mut c: Command,
    substituter: &str,
    root: &Path,
    paths: &[&str],
    trusted_key: &str,
) -> Output {
    c.arg("--store")
        .arg(root)
        .arg("--realise")
        .args(paths)
        .args(NIX_OPTS);
    c.args([
        "--option",
        "substituters",
        substituter,
        "--option",
        "trusted-public-keys",
        trusted_key,
        "--option",
        "require-sigs",
        "true",
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ]);
    run(&mut c)
}

/// A static HTTP server over `dir` on 127.0.0.1 (python3's http.server), killed on drop.
pub struct HttpServer {
    pub port: u16,
    child: Child,
}

impl HttpServer {
    pub fn serve(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        wait_for_port(port, "python3 http.server");
        HttpServer { port, child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh chroot store directory for a client.
pub fn fresh_root(what: &str) -> PathBuf {
    temp_dir(what).join("root")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
