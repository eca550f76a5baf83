//! For the cache-life tests (`tests/life.rs`): one S3 server with a bucket, a Nix key
//! pair, narpush with credentials for it, and the server's clock turned back for
//! chosen objects (s3s-fs reports a file's mtime as the object's LastModified, so
//! setting the mtime back makes an object old by the server's own clock; no sleeping).
#![allow(dead_code)]

use super::nix::{narpush, nix_keypair, stderr, stdout};
use super::s3server::{temp_dir, S3Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

pub const DAY: u64 = 86_400;

pub struct Life {
    pub s3: S3Server,
    pub dir: PathBuf,
    pub sec: PathBuf,
    pub public: String,
    pub bucket: &'static str,
}

impl Life {
    /// A server, no bucket yet.
    pub fn new(what: &str) -> Life {
        let dir = temp_dir(what);
        let (sec, public) = nix_keypair(&dir, "narpush-life-1");
        Life {
            s3: S3Server::start(),
            dir,
            sec,
            public,
            bucket: "cache",
        }
    }

    /// A server with the bucket made.
    pub fn with_bucket(what: &str) -> Life {
        let l = Life::new(what);
        l.s3.create_bucket(l.bucket);
        l
    }

    pub fn url(&self) -> String {
        self.s3.url(self.bucket)
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.s3.bucket_dir(self.bucket)
    }

    /// narpush with credentials for the server (HOME is the test's directory).
    pub fn narpush(&self) -> Command {
        let mut c = narpush();
        c.env("HOME", &self.dir)
            .env("NARPUSH_STATE_DIR", self.dir.join("state"))
            .env("AWS_ACCESS_KEY_ID", &self.s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.s3.secret_key);
        c
    }

    /// Run `narpush ARGS…`; returns the output (callers assert).
    pub fn run(&self, args: &[&str]) -> Output {
        self.narpush().args(args).output().expect("run narpush")
    }

    /// Run `narpush ARGS…` and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "narpush {args:?} failed ({}):\nstdout: {}\nstderr: {}\ns3s-fs log: {}",
            out.status,
            stdout(&out),
            stderr(&out),
            self.s3.log()
        );
        stdout(&out)
    }

    /// `narpush push --to URL --key-file K ARGS…`.
    pub fn push(&self, args: &[&str]) -> String {
        let url = self.url();
        let sec = self.sec.to_str().unwrap().to_string();
        let mut all = vec!["push", "--to", &url, "--key-file", &sec];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// `narpush verify --to URL --trusted-key PUBLIC ARGS…`.
    pub fn verify(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["verify", "--to", &url, "--trusted-key", &self.public];
        all.extend_from_slice(args);
        self.run(&all)
    }
}

/// Set a file's modification time `secs` into the past.
pub fn age(path: &Path, secs: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("set the mtime of {}: {e}", path.display()));
}

/// Age every object under `dir` by `secs`.
pub fn age_all(dir: &Path, secs: u64) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let e = e.unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                age(&e.path(), secs);
            }
        }
    }
}

/// The `<hash>.narinfo` key of a store path.
pub fn narinfo_key(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap();
    format!("{}.narinfo", base.split('-').next().unwrap())
}

/// `nix-store -qd`: the deriver of a store path.
pub fn deriver(path: &str) -> String {
    super::nix::ok(Command::new("nix-store").args(["-qd", path]))
        .trim()
        .to_string()
}
