//! What every fault test checks afterwards, straight from s3s-fs's directory and the
//! state directory: each narinfo's NAR exists and matches its FileHash and FileSize,
//! no multipart upload is left behind, the pending list has no duplicate lines, and
//! every path is either in the cache or pending. Also helpers to make store paths and
//! run narpush as a hook against a bucket.
#![allow(dead_code)]

use super::nix;
use super::s3server::{temp_dir, S3Server};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Deterministic, incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `n` small fresh store paths.
pub fn small_paths(tag: &str, n: usize) -> Vec<String> {
    let nonce = nix::nonce(tag);
    (0..n)
        .map(|i| nix::add_file(&format!("{tag}-{i}"), format!("{nonce} {i}\n").as_bytes()))
        .collect()
}

/// A store path whose NAR is a bit over 12 MiB of incompressible bytes (three parts of
/// 5 MiB); the same path every call.
pub fn big_path() -> String {
    nix::add_file(
        "narpush-faults-big.bin",
        &noise(12 * 1024 * 1024 + 300_000, 7),
    )
}

/// A fresh signing key file (mode 0600).
pub fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let k = narpush::nix::signing::SecretKey::generate("narpush-faults-1").unwrap();
    let p = dir.join("key.sec");
    std::fs::write(&p, k.to_file_string()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// One hook or push environment: a state dir, a key and credentials for `server`.
pub struct Env {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub key: PathBuf,
    pub access_key: String,
    pub secret_key: String,
}

impl Env {
    pub fn new(what: &str, server: &S3Server) -> Env {
        let dir = temp_dir(what);
        Env {
            state: dir.join("state"),
            key: key_file(&dir),
            access_key: server.access_key.clone(),
            secret_key: server.secret_key.clone(),
            dir,
        }
    }

    /// narpush with this environment's state dir, key and credentials (HOME is a
    /// fresh directory, so no ~/.aws is read).
    pub fn narpush(&self) -> Command {
        let mut c = nix::narpush();
        c.env("HOME", &self.dir)
            .env("NARPUSH_STATE_DIR", &self.state)
            .env("NARPUSH_KEY_FILE", &self.key)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key);
        c
    }

    /// Run as Nix's post-build-hook (no arguments) for `paths`; returns the output
    /// and how long it took.
    pub fn hook(&self, url: &str, paths: &[String]) -> (Output, Duration) {
        let mut c = self.narpush();
        c.env("NARPUSH_TO", url).env("OUT_PATHS", paths.join(" "));
        timed(&mut c)
    }

    /// `narpush retry --to URL`.
    pub fn retry(&self, url: &str) -> (Output, Duration) {
        let mut c = self.narpush();
        c.args(["retry", "--to", url]);
        timed(&mut c)
    }

    /// The pending list, asserting it has no duplicate lines.
    pub fn pending(&self) -> Vec<String> {
        pending_in(&self.state)
    }
}

pub fn timed(c: &mut Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = nix::run(c);
    (out, t.elapsed())
}

/// The lines of STATE/pending, asserting there are no duplicates.
pub fn pending_in(state: &Path) -> Vec<String> {
    let file = state.join("pending");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        // Nothing was ever pending.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read the pending list {}: {e}", file.display()),
    };
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let set: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        set.len(),
        lines.len(),
        "duplicate lines in pending list:\n{text}"
    );
    lines
}

/// Check the bucket's consistency and return the store paths it has narinfos for.
pub fn check_bucket(server: &S3Server, bucket: &str) -> BTreeSet<String> {
    let dir = server.bucket_dir(bucket);
    let mut have = BTreeSet::new();
    // An unreadable (or missing) bucket must fail the check, never read as empty.
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read bucket directory {}: {e}", dir.display()));
    for e in entries {
        let e = e.unwrap_or_else(|e| panic!("cannot read bucket directory {}: {e}", dir.display()));
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".narinfo") {
            continue;
        }
        let text = std::fs::read_to_string(e.path())
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", e.path().display()));
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap_or_else(|| panic!("{name} has no {k}:\n{text}"))
                .to_string()
        };
        let url = field("URL");
        let nar = dir.join(&url);
        let bytes = std::fs::read(&nar)
            .unwrap_or_else(|e| panic!("{name} names {url}, which is missing ({e}):\n{text}"));
        assert_eq!(
            field("FileSize"),
            bytes.len().to_string(),
            "{name}: FileSize disagrees with {url}"
        );
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(
            field("FileHash"),
            format!("sha256:{}", narpush::nix::nixbase32::encode(&hash)),
            "{name}: FileHash disagrees with {url}"
        );
        assert!(field("Sig").contains(':'), "{name} is not signed");
        have.insert(field("StorePath"));
    }
    have
}

/// The full check: consistent bucket, no multipart upload left behind, every path in
/// `paths` in the cache or pending. Returns (in cache, pending).
pub fn check_all(
    server: &S3Server,
    bucket: &str,
    paths: &[String],
    pending: &[String],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let cached = check_bucket(server, bucket);
    assert_eq!(
        server.pending_uploads(),
        Vec::<String>::new(),
        "multipart uploads left behind"
    );
    let pending: BTreeSet<String> = pending.iter().cloned().collect();
    for p in paths {
        assert!(
            cached.contains(p) || pending.contains(p),
            "{p} is neither in the cache nor pending (cache: {cached:?}, pending: {pending:?})"
        );
    }
    (cached, pending)
}

/// stderr lines that mention `path`.
pub fn lines_naming<'a>(stderr: &'a str, path: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(path)).collect()
}
