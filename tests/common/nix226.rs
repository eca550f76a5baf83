//! Debian 13's Nix 2.26 in a chroot, a second real Nix beside the host's 2.8: the
//! chroot is made once by `scripts/nix226.sh` (which `make test` runs before cargo
//! test) and each command here runs in it through `scripts/nix226.sh run`, which
//! gives the command a mount namespace of its own with /dev, /proc, the temporary
//! directory and narpush's build directory mounted at the same paths as outside.
//! So a test writes files under `temp_dir` and both Nixes see them; the 2.26 store
//! itself is the chroot's `/nix/store`. A missing chroot fails the test, loudly,
//! naming the script to run; it is never skipped.
#![allow(dead_code)]

use super::nix::{narpush_env, NIX_OPTS};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The chroot's directory: `NARPUSH_NIX226`, else `<crate>/.tools/nix-2.26`.
pub fn dir() -> PathBuf {
    std::env::var_os("NARPUSH_NIX226")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nix-2.26"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nix226.sh")
}

/// The chroot's root directory; panics, saying how to make it, when it is missing.
pub fn root() -> PathBuf {
    let d = dir();
    let ready = super::read_if_exists(&d.join("ready"));
    assert!(
        ready.lines().any(|l| l.starts_with("nix ")),
        "no Nix 2.26 chroot at {} (its `ready` marker is missing): make it with \
         `bash scripts/nix226.sh` (as root; `make test` runs it), or set NARPUSH_NIX226 \
         to where it is",
        d.display()
    );
    d.join("root")
}

/// `program ARGS…` run inside the chroot, as root, with the host's network.
pub fn cmd(program: &str) -> Command {
    root();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_narpush"))
        .parent()
        .expect("narpush binary directory");
    let mut c = Command::new("bash");
    c.arg(script())
        .arg("run")
        .arg(program)
        .env("NARPUSH_NIX226", dir())
        .env("NARPUSH_NIX226_BIND", bin_dir);
    c
}

/// The narpush binary built for the host (glibc; the chroot's glibc is newer), run
/// inside the chroot, so it asks Nix 2.26 about its store.
pub fn narpush() -> Command {
    let mut c = cmd(env!("CARGO_BIN_EXE_narpush"));
    narpush_env(&mut c);
    c
}

/// The 2.26 `nix` command, with the options every test needs.
pub fn nix() -> Command {
    let mut c = cmd("nix");
    c.args(NIX_OPTS);
    c
}

/// A store path's location on the host, inside the chroot's store.
pub fn on_host(store_path: &str) -> PathBuf {
    root().join(store_path.trim_start_matches('/'))
}
