//! Secrets stay secret: the error paths of faults.rs and bad_input.rs are run again
//! with recognisable secret values (a signing key, an S3 secret key, a session token)
//! and `--verbose`, and none of them, nor their base64 or hex, nor the SigV4
//! signatures narpush sent (read off the proxy), may appear in stdout, stderr, the
//! pending list or any other file narpush wrote. TLS verification cannot be turned
//! off from the environment, and the state directory and its files are private.

mod common;

use common::cachecheck::{small_paths, Env};
use common::nix::{self, stderr, stdout};
use common::proxy::{refused_port, Action, Proxy, Req};
use common::s3server::{free_port, temp_dir, S3Server};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BUCKET: &str = "secrets";
const S3_SECRET: &str = "SeCrEtS3keyNARPUSH0123456789abcdefGHIJ";
const TOKEN: &str = "SessionTokenNARPUSH9876543210zyxwvuTOKEN";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every form of `secret` worth looking for.
fn forms(secret: &[u8]) -> Vec<String> {
    let b64 = narpush::encoding::base64_encode(secret);
    vec![
        String::from_utf8_lossy(secret).into_owned(),
        b64.trim_end_matches('=').to_string(),
        hex(secret),
        hex(secret).to_uppercase(),
    ]
}

/// Everything that must not leak: the S3 secret, the session token, the server's
/// real secret, the signing key file's payload, its seed, and SigV4 signatures.
struct Secrets {
    needles: Vec<String>,
}

impl Secrets {
    fn new(server: &S3Server, key_file: &Path) -> Secrets {
        let mut needles = Vec::new();
        needles.extend(forms(S3_SECRET.as_bytes()));
        needles.extend(forms(TOKEN.as_bytes()));
        needles.extend(forms(server.secret_key.as_bytes()));
        let text = std::fs::read_to_string(key_file).unwrap();
        let payload = text.trim().split_once(':').unwrap().1.to_string();
        let raw = narpush::encoding::base64_decode(&payload).unwrap();
        needles.push(payload);
        needles.extend(forms(&raw));
        needles.extend(forms(&raw[..32]));
        Secrets { needles }
    }

    /// Add the signatures of `reqs`; returns how many there were.
    fn add_signatures(&mut self, reqs: &[Req]) -> usize {
        let before = self.needles.len();
        for r in reqs {
            if let Some(sig) = r.head.split("Signature=").nth(1) {
                let sig: String = sig.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                assert_eq!(sig.len(), 64, "{}", r.head);
                // Not even half of one.
                self.needles.push(sig[..32].to_string());
                self.needles.push(sig[32..].to_string());
            }
        }
        (self.needles.len() - before) / 2
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for n in &self.needles {
            assert!(
                !text.contains(n.as_str()),
                "{what} contains a secret ({n}):\n{text}"
            );
        }
    }

    /// stdout, stderr and every file under `dir` except the inputs we wrote.
    fn check(&self, out: &Output, dirs: &[&Path], inputs: &[&Path]) {
        self.assert_absent("stdout", &stdout(out));
        self.assert_absent("stderr", &stderr(out));
        for d in dirs {
            self.check_tree(d, inputs);
        }
    }

    /// Every file under `dir`; a directory or file it cannot read fails the test
    /// (an unread file cannot be said to hold no secret).
    fn check_tree(&self, dir: &Path, inputs: &[&Path]) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
            panic!("secrets scan: cannot read directory {}: {e}", dir.display())
        });
        for e in entries {
            let e = e.unwrap_or_else(|e| panic!("secrets scan: reading {}: {e}", dir.display()));
            let p = e.path();
            if inputs.contains(&p.as_path()) {
                continue;
            }
            let ft = e
                .file_type()
                .unwrap_or_else(|e| panic!("secrets scan: stat {}: {e}", p.display()));
            if ft.is_dir() {
                self.check_tree(&p, inputs);
            } else {
                let bytes = std::fs::read(&p)
                    .unwrap_or_else(|e| panic!("secrets scan: cannot read {}: {e}", p.display()));
                self.assert_absent(&p.display().to_string(), &String::from_utf8_lossy(&bytes));
            }
        }
    }
}

fn verbose_hook(env: &Env, url: &str, paths: &[String], extra: &[(&str, &str)]) -> Output {
    let mut c = env.narpush();
    c.arg("-v")
        .env("NARPUSH_TO", url)
        .env("OUT_PATHS", paths.join(" "));
    for (k, v) in extra {
        c.env(k, v);
    }
    nix::run(&mut c)
}

#[test]
fn no_secret_in_any_output_or_file() {
    let s = S3Server::start();
    s.create_bucket(BUCKET);
    let proxy = Proxy::start(s.port, |req: &Req| {
        if req.target.contains("stall") {
            Action::Stall
        } else {
            Action::Forward
        }
    });
    let paths = small_paths("secrets", 2);
    let env = Env::new("secrets", &s);
    let mut secrets = Secrets::new(&s, &env.key);
    let mut outs = Vec::new();

    // A verbose push that works (the real secret, so signatures are made).
    let url = proxy.url(BUCKET, "&connect-timeout=1&io-timeout=2&retry-attempts=2");
    let out = verbose_hook(&env, &url, &paths[..1], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    outs.push(out);
    // Wrong secret and a session token: 403s.
    let mut wrong = Env::new("secrets-wrong", &s);
    wrong.secret_key = S3_SECRET.into();
    wrong.key = env.key.clone();
    outs.push(verbose_hook(
        &wrong,
        &url,
        &paths[1..],
        &[("AWS_SESSION_TOKEN", TOKEN)],
    ));
    // Unreachable, and a stall (io timeouts).
    let refused = format!(
        "s3://{BUCKET}?endpoint=127.0.0.1:{}&scheme=http&retry-attempts=2",
        refused_port()
    );
    outs.push(verbose_hook(
        &wrong,
        &refused,
        &paths,
        &[("AWS_SESSION_TOKEN", TOKEN)],
    ));
    let stall = proxy.url(
        "stall-bucket",
        "&connect-timeout=1&io-timeout=1&retry-attempts=1",
    );
    outs.push(verbose_hook(
        &wrong,
        &stall,
        &paths,
        &[("AWS_SESSION_TOKEN", TOKEN)],
    ));

    // Bad key files that hold the secret: a flipped public half, a bad character.
    let text = std::fs::read_to_string(&env.key).unwrap();
    let (name, payload) = text.trim().split_once(':').unwrap();
    let mut raw = narpush::encoding::base64_decode(payload).unwrap();
    raw[63] ^= 1;
    let flipped = wrong.dir.join("flipped.sec");
    std::fs::write(
        &flipped,
        format!("{name}:{}", narpush::encoding::base64_encode(&raw)),
    )
    .unwrap();
    let badchar = wrong.dir.join("badchar.sec");
    std::fs::write(&badchar, format!("{name}:{payload}*")).unwrap();
    for k in [&flipped, &badchar] {
        let out = nix::run(
            wrong
                .narpush()
                .args(["push", "-v", "--to", &url, "--key-file"])
                .arg(k)
                .arg(&paths[0]),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        outs.push(out);
    }
    // Credentials files whose bad line holds the secret.
    for (name, text) in [
        (
            "credentials",
            format!("[default]\naws_access_key_id = AKIA\naws_secret_access_key {S3_SECRET}\n"),
        ),
        ("creds.env", format!("AWS_SECRET_ACCESS_KEY {S3_SECRET}\n")),
    ] {
        let f = wrong.dir.join(name);
        std::fs::write(&f, text).unwrap();
        let out = nix::run(
            nix::narpush()
                .env("HOME", &wrong.dir)
                .args(["push", "-v", "--to", &url, "--credentials-file"])
                .arg(&f)
                .arg(&paths[0]),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        outs.push(out);
    }
    // Hook-mode input errors with every secret in the environment.
    outs.push(verbose_hook(
        &wrong,
        &url,
        &["junk".to_string(), "/nix/store/abc".to_string()],
        &[("AWS_SESSION_TOKEN", TOKEN)],
    ));
    outs.push(verbose_hook(&wrong, "s3://Bad_Bucket", &paths, &[]));

    let signed = secrets.add_signatures(&proxy.requests());
    assert!(signed >= 5, "signatures to look for: {signed}");
    // Control: the needles do match what went over the wire (the session token and
    // the signatures are in the requests), so their absence below means something.
    let heads: String = proxy.requests().iter().map(|r| r.head.clone()).collect();
    for n in [TOKEN.to_string(), secrets.needles.last().unwrap().clone()] {
        assert!(heads.contains(&n), "control needle {n} not sent");
    }
    let inputs = [env.key.as_path(), flipped.as_path(), badchar.as_path()];
    let creds_files = [
        wrong.dir.join("credentials"),
        wrong.dir.join("creds.env"),
        wrong.key.clone(),
    ];
    let mut all_inputs: Vec<&Path> = inputs.to_vec();
    all_inputs.extend(creds_files.iter().map(|p| p.as_path()));
    for out in &outs {
        secrets.check(out, &[&env.dir, &wrong.dir], &all_inputs);
    }
    // Something was actually written to look at.
    assert!(!wrong.pending().is_empty());
}

#[test]
fn state_dir_and_files_are_private() {
    let s = S3Server::start();
    let paths = small_paths("private", 1);
    let env = Env::new("private", &s);
    let url = format!(
        "s3://{BUCKET}?endpoint=127.0.0.1:{}&scheme=http&retry-attempts=1",
        refused_port()
    );
    // Under a umask that would make everything world-readable.
    let mut c = env.narpush();
    c.env("NARPUSH_TO", &url).env("OUT_PATHS", paths.join(" "));
    let out = nix::run(
        Command::new("sh")
            .args(["-c", "umask 000; exec \"$0\""])
            .arg(c.get_program())
            .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.state), 0o700, "state directory");
    for f in ["pending", "pending.lock"] {
        assert_eq!(mode(&env.state.join(f)), 0o600, "{f}");
    }
}

#[test]
fn tls_verification_cannot_be_turned_off_by_the_environment() {
    let s = S3Server::start();
    s.create_bucket(BUCKET);
    let dir = temp_dir("secrets-tls");
    common::tlsutil::make_ca_and_cert(&dir);
    let tls_port = free_port();
    let _st = common::tlsutil::start_stunnel(&dir, tls_port, s.port);
    let paths = small_paths("tls", 1);
    let env = Env::new("tls", &s);
    let url = format!("s3://{BUCKET}?endpoint=https://127.0.0.1:{tls_port}&retry-attempts=1");
    let mut c = env.narpush();
    c.env("NARPUSH_TO", &url).env("OUT_PATHS", paths.join(" "));
    for (k, v) in [
        ("NARPUSH_INSECURE", "1"),
        ("NARPUSH_TLS_VERIFY", "0"),
        ("SSL_NO_VERIFY", "1"),
        ("CURL_CA_BUNDLE", ""),
        ("REQUESTS_CA_BUNDLE", ""),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0"),
        ("GIT_SSL_NO_VERIFY", "1"),
        ("AWS_CA_BUNDLE", ""),
        ("PYTHONHTTPSVERIFY", "0"),
    ] {
        c.env(k, v);
    }
    let out = nix::run(&mut c);
    let err = stderr(&out);
    assert!(out.status.success(), "hook exits 0: {err}");
    assert!(err.contains("TLS certificate is not trusted"), "{err}");
    assert_eq!(env.pending(), paths);
    assert!(
        std::fs::read_dir(s.bucket_dir(BUCKET))
            .unwrap()
            .next()
            .is_none(),
        "nothing written"
    );

    // The same server is fine once its CA is trusted the documented way.
    let mut c = env.narpush();
    c.args(["retry", "--to", &url])
        .env("NIX_SSL_CERT_FILE", dir.join("ca.pem"));
    let out = nix::run(&mut c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.pending().is_empty());
}

#[test]
fn the_scan_fails_on_a_directory_it_cannot_read() {
    let secrets = Secrets {
        needles: vec!["never-there".into()],
    };
    let dir = temp_dir("secrets-scan");
    std::fs::write(dir.join("file"), "nothing secret").unwrap();
    secrets.check_tree(&dir, &[]);
    let missing = dir.join("missing");
    let r = std::panic::catch_unwind(|| secrets.check_tree(&missing, &[]));
    let msg = r.expect_err("a directory that cannot be read passed the scan");
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("cannot read directory"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
