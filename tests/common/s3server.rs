//! A real S3 server for integration tests: `s3s-fs` (which checks SigV4) on a free
//! 127.0.0.1 port over a temporary directory, killed on drop. The binary comes from
//! `NARPUSH_S3S_FS`, else `<crate>/.tools/bin/s3s-fs` (installed by the Makefile);
//! a missing binary fails the test loudly, it is never skipped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    pub port: u16,
    pub root: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    child: Option<Child>,
    tmp: PathBuf,
}

/// The s3s-fs binary to run.
pub fn s3s_fs_binary() -> PathBuf {
    let bin = std::env::var_os("NARPUSH_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/s3s-fs"));
    assert!(
        bin.is_file(),
        "s3s-fs not found at {}: install it with `cargo install s3s-fs@0.14.1 --features binary --locked \
         --root .tools` (or `make tools`), or set NARPUSH_S3S_FS to its path",
        bin.display()
    );
    bin
}

/// A fresh directory under the system temp dir, unique to this process and call.
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("narpush-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Wait until something accepts on 127.0.0.1:port.
pub fn wait_for_port(port: u16, what: &str) {
    wait_for_addr("127.0.0.1", port, what);
}

/// Wait until something accepts on host:port.
pub fn wait_for_addr(host: &str, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((host, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {host}:{port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl S3Server {
    pub fn start() -> S3Server {
        let tmp = temp_dir("s3s");
        let root = tmp.join("data");
        std::fs::create_dir_all(&root).expect("create s3s-fs root");
        let mut s = S3Server {
            port: free_port(),
            root,
            access_key: "narpush-test-key".to_string(),
            secret_key: "narpush-test-secret-Zq8v".to_string(),
            child: None,
            tmp,
        };
        s.restart();
        s
    }

    /// (Re)start on the same port and root.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.tmp.join("s3s-fs.log")).expect("create s3s-fs log");
        let child = Command::new(s3s_fs_binary())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        wait_for_port(self.port, "s3s-fs");
    }

    /// Stop the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze the server (SIGSTOP): it still accepts connections (the kernel
    /// does) but answers nothing, like a server that stalls.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("s3s-fs is running").id();
        let st = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid} failed");
    }

    /// Create a bucket (s3s-fs keeps a bucket as a directory under the root).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("create bucket directory");
    }

    /// `s3://BUCKET?endpoint=127.0.0.1:PORT&scheme=http`.
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint=127.0.0.1:{}&scheme=http", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where s3s-fs keeps an object: a plain file at `<root>/<bucket>/<key>`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// The bucket's directory (to serve over HTTP to real `nix`).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// Multipart uploads s3s-fs still holds, as file names under the root
    /// (`.upload-<id>.json` and `.upload_id-<id>.part-<n>`): s3s-fs 0.14 does not
    /// implement ListMultipartUploads, so orphans are found on disk.
    pub fn pending_uploads(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.root)
            .expect("read s3s-fs root")
            .map(|e| {
                e.expect("read s3s-fs root entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
            .collect();
        out.sort();
        out
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.join("s3s-fs.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
