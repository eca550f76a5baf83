//! Bad input, through the real binary: each case gives one clear `narpush: error:`
//! line naming the thing that is wrong, exit 2 for usage and configuration mistakes
//! and 1 for run-time failures, and nothing is written to the cache.
//!
//! Not covered: an unreadable file inside a store path. Tests run as root, which
//! reads any mode, and a store path cannot hold a FIFO or socket (`nix-store --add`
//! refuses them), so there is no honest way to make one here.

mod common;

use common::cachecheck::{key_file, small_paths};
use common::nix::{self, narpush, stderr};
use common::s3server::temp_dir;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Case {
    dir: PathBuf,
    cache: PathBuf,
    key: PathBuf,
}

impl Case {
    fn new(what: &str) -> Case {
        let dir = temp_dir(what);
        Case {
            cache: dir.join("cache"),
            key: key_file(&dir),
            dir,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.cache.display())
    }

    /// `narpush push --to file://… --key-file K ARGS…`
    fn push(&self, args: &[&str]) -> Output {
        nix::run(
            narpush()
                .env("HOME", &self.dir)
                .env("NARPUSH_STATE_DIR", self.dir.join("state"))
                .args(["push", "--to", &self.url(), "--key-file"])
                .arg(&self.key)
                .args(args),
        )
    }

    fn narinfos(&self) -> usize {
        std::fs::read_dir(&self.cache)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".narinfo")
                })
                .count()
            })
            .unwrap_or(0)
    }
}

/// Exit `code`, exactly one error line, which contains every `needle`; nothing in
/// the cache.
fn one_error(case: &Case, out: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("narpush: warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "one line:\n{err}");
    assert!(errors[0].starts_with("narpush: error: "), "{err}");
    for n in needles {
        assert!(errors[0].contains(n), "missing {n:?} in: {err}");
    }
    assert_eq!(case.narinfos(), 0, "nothing written");
    errors[0].to_string()
}

#[test]
fn arguments_that_are_not_store_paths() {
    let c = Case::new("bad-args");
    one_error(
        &c,
        &c.push(&["/etc/passwd"]),
        2,
        &["'/etc/passwd'", "not in the Nix store"],
    );
    one_error(
        &c,
        &c.push(&["/nonexistent/thing"]),
        2,
        &["'/nonexistent/thing'", "does not exist"],
    );
    // The known issue: name what was typed, not its last component.
    one_error(
        &c,
        &c.push(&["/nix/store/abc"]),
        2,
        &["'/nix/store/abc'", "not a valid store path"],
    );
    let well_formed = "/nix/store/00000000000000000000000000000000-narpush-never-built";
    one_error(
        &c,
        &c.push(&[well_formed]),
        2,
        &[well_formed, "does not exist"],
    );

    // Inside a store path.
    let src = c.dir.join("tree");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/tool"), "#!/bin/sh\n").unwrap();
    let tree = nix::ok(
        std::process::Command::new("nix-store")
            .arg("--add")
            .arg(&src),
    )
    .trim()
    .to_string();
    let inside = format!("{tree}/bin");
    one_error(
        &c,
        &c.push(&[&inside]),
        2,
        &[&inside, "inside a store path", &tree],
    );

    // A symlink loop.
    let (a, b) = (c.dir.join("loop-a"), c.dir.join("loop-b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    one_error(
        &c,
        &c.push(&[a.to_str().unwrap()]),
        2,
        &["loop-a", "symbolic links"],
    );

    // A good path next to a bad one: nothing is pushed.
    let good = small_paths("bad-args-good", 1).remove(0);
    one_error(&c, &c.push(&[&good, "/etc/passwd"]), 2, &["'/etc/passwd'"]);
}

#[test]
fn a_store_path_on_disk_that_nix_does_not_know() {
    let c = Case::new("bad-invalid");
    let p = format!("/nix/store/{}-narpush-not-registered", "1".repeat(32));
    std::fs::create_dir_all(&p).unwrap();
    let out = c.push(&[&p]);
    let _ = std::fs::remove_dir_all(&p);
    one_error(&c, &out, 1, &[&p, "not valid in the local Nix store"]);
}

#[test]
fn hook_environment_junk() {
    let c = Case::new("bad-hook");
    let good = small_paths("bad-hook-good", 1).remove(0);
    let invalid = format!("/nix/store/{}-narpush-not-built", "2".repeat(32));
    let out = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .env("NARPUSH_STATE_DIR", c.dir.join("state"))
            .env("NARPUSH_TO", c.url())
            .env("NARPUSH_KEY_FILE", &c.key)
            .env(
                "OUT_PATHS",
                format!("junk  {good} /tmp/x\t{invalid} /nix/store/abc"),
            ),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for (tok, why) in [
        ("'junk'", "not in the Nix store"),
        ("'/tmp/x'", "not in the Nix store"),
        ("'/nix/store/abc'", "not a valid store path"),
        (invalid.as_str(), "not valid in the local Nix store"),
    ] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(tok)).collect();
        assert_eq!(lines.len(), 1, "{tok}: {err}");
        assert!(
            lines[0].starts_with("narpush: ignored OUT_PATHS entry"),
            "{err}"
        );
        assert!(lines[0].contains(why), "{err}");
    }
    assert_eq!(c.narinfos(), 1, "the good path is pushed: {err}");
    let pending = common::read_if_exists(&c.dir.join("state/pending"));
    assert!(pending.is_empty(), "junk is not recorded: {pending}");

    // DRV_PATH that does not exist (OUT_PATHS empty, as Nix 2.8 may leave it).
    let drv = "/nix/store/33333333333333333333333333333333-narpush-gone.drv";
    let out = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .env("NARPUSH_STATE_DIR", c.dir.join("state2"))
            .env("NARPUSH_TO", c.url())
            .env("NARPUSH_KEY_FILE", &c.key)
            .env("OUT_PATHS", "")
            .env("DRV_PATH", drv),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "a hook exits 0: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(drv) && err.contains("does not exist"), "{err}");
    assert!(!c.dir.join("state2/pending").exists(), "nothing to record");
}

#[test]
fn many_invalid_paths_in_out_paths() {
    // Linux caps one environment string at 128 KiB (MAX_ARG_STRLEN), so Nix itself
    // cannot hand a hook 10,000 paths in OUT_PATHS; 2,500 short ones fit.
    let c = Case::new("bad-many");
    let paths: Vec<String> = (0..2500)
        .map(|i| format!("/nix/store/{}-{i}", narpush_hash(i)))
        .collect();
    let joined = paths.join(" ");
    assert!(joined.len() < 128 * 1024);
    let out = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .env("NARPUSH_STATE_DIR", c.dir.join("state"))
            .env("NARPUSH_TO", c.url())
            .env("NARPUSH_KEY_FILE", &c.key)
            .env("OUT_PATHS", &joined),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{}", &err[..err.len().min(2000)]);
    let ignored = err
        .lines()
        .filter(|l| l.starts_with("narpush: ignored OUT_PATHS entry"))
        .count();
    assert_eq!(ignored, paths.len(), "one line per path");
    assert!(err.len() < paths.len() * 200, "stderr stays proportionate");
    assert!(
        !c.dir.join("state/pending").exists()
            || std::fs::read_to_string(c.dir.join("state/pending"))
                .unwrap()
                .is_empty()
    );

    // By hand, 10,000 arguments: refused at the first, in one line.
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("/nix/store/{}-p{i}", narpush_hash(i)))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let out = c.push(&refs);
    one_error(&c, &out, 2, &[&many[0], "does not exist"]);
}

/// A well-formed nix32 hash part derived from `i`.
fn narpush_hash(i: usize) -> String {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % 32) as usize] as char
        })
        .collect()
}

fn write_key(c: &Case, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = c.dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn push_with_key(c: &Case, key: &Path, path: &str) -> Output {
    nix::run(
        narpush()
            .env("HOME", &c.dir)
            .args(["push", "--to", &c.url(), "--key-file"])
            .arg(key)
            .arg(path),
    )
}

#[test]
fn bad_key_files() {
    let c = Case::new("bad-keys");
    let good = small_paths("bad-keys", 1).remove(0);
    let secret = std::fs::read_to_string(&c.key).unwrap();
    let (name, b64) = secret.split_once(':').unwrap();
    let sk = narpush::nix::signing::SecretKey::parse(&secret, "test").unwrap();
    let public = sk.public().to_file_string();
    for (file, text, needle) in [
        ("empty.sec", String::new(), "empty"),
        (
            "nobase64.sec",
            format!("{name}:!!!not base64!!!"),
            "not base64",
        ),
        ("short.sec", format!("{name}:{}", &b64[..44]), "not 64"),
        ("public.sec", public.clone(), "public key"),
        ("noname.sec", b64.to_string(), "name:"),
    ] {
        let k = write_key(&c, file, &text, 0o600);
        let out = push_with_key(&c, &k, &good);
        let line = one_error(&c, &out, 2, &[file, needle]);
        assert!(!line.contains(b64), "{line}");
    }
    // CRLF-terminated, as Nix accepts it.
    let k = write_key(&c, "crlf.sec", &format!("{secret}\r\n"), 0o600);
    let out = push_with_key(&c, &k, &good);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.narinfos(), 1);
    // Readable by others: pushed, with a warning, as ssh would.
    let other = small_paths("bad-keys-mode", 1).remove(0);
    let k = write_key(&c, "open.sec", &secret, 0o644);
    let out = push_with_key(&c, &k, &other);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let warn: Vec<&str> = err.lines().filter(|l| l.contains("open.sec")).collect();
    assert_eq!(warn.len(), 1, "{err}");
    assert!(
        warn[0].starts_with("narpush: warning:") && warn[0].contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn bad_store_urls() {
    let c = Case::new("bad-urls");
    let good = small_paths("bad-urls", 1).remove(0);
    for (url, needles) in [
        ("s3://", &["names no bucket"][..]),
        ("s3://?endpoint=127.0.0.1:9000", &["names no bucket"][..]),
        ("ftp://host/x", &["unsupported scheme 'ftp'"][..]),
        (
            "s3://bkt?colour=blue",
            &["unknown parameter 'colour'", "known:"][..],
        ),
        ("s3://bkt?endpoint=127.0.0.1:99999", &["99999", "port"][..]),
        ("s3://bkt?endpoint=127.0.0.1:http", &["port"][..]),
        ("s3://Bad_Bucket", &["'Bad_Bucket'", "lowercase"][..]),
        ("s3://ab", &["'ab'", "3 to 63"][..]),
        ("s3://bkt?io-timeout=0", &["io-timeout=0"][..]),
        ("file://relative/dir", &["absolute path"][..]),
    ] {
        let out = nix::run(
            narpush()
                .env("HOME", &c.dir)
                .env("AWS_ACCESS_KEY_ID", "a")
                .env("AWS_SECRET_ACCESS_KEY", "b")
                .args(["push", "-q", "--to", url])
                .arg(&good),
        );
        let mut want = vec![url];
        want.extend_from_slice(needles);
        one_error(&c, &out, 2, &want);
    }
}

#[test]
fn malformed_credentials_and_config_files() {
    let c = Case::new("bad-files");
    let good = small_paths("bad-files", 1).remove(0);
    let creds = c.dir.join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIA\nthis line is junk\n",
    )
    .unwrap();
    let out = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .args([
                "push",
                "-q",
                "--to",
                "s3://bkt?endpoint=127.0.0.1:1&scheme=http",
            ])
            .arg("--credentials-file")
            .arg(&creds)
            .arg(&good),
    );
    one_error(&c, &out, 2, &[creds.to_str().unwrap(), "line 3"]);

    let conf = c.dir.join("narpush.toml");
    std::fs::write(&conf, "# narpush\njobs = 4\nto = file:///unquoted\n").unwrap();
    let out = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .arg("push")
            .arg("--config")
            .arg(&conf)
            .arg(&good),
    );
    one_error(&c, &out, 2, &[conf.to_str().unwrap(), "line 3"]);
}

#[test]
fn a_hook_that_cannot_start_records_its_derivation_and_retry_pushes_the_outputs() {
    let c = Case::new("bad-drvhook");
    let expr = format!(
        r#"derivation {{ name = "narpush-drvhook"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo {} > $out" ]; PATH = "/usr/bin:/bin"; }}"#,
        nix::nonce("drvhook")
    );
    let file = c.dir.join("d.nix");
    std::fs::write(&file, expr).unwrap();
    let drv = nix::ok(
        std::process::Command::new("nix-instantiate")
            .arg(&file)
            .args(nix::NIX_OPTS),
    )
    .trim()
    .to_string();
    let out = nix::ok(
        std::process::Command::new("nix-store")
            .args(["--realise", &drv])
            .args(nix::NIX_OPTS),
    )
    .trim()
    .to_string();
    // Nix 2.8 may leave OUT_PATHS empty; the configuration is broken, so the hook
    // cannot even start: it records the derivation.
    let hook = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .env("NARPUSH_STATE_DIR", c.dir.join("state"))
            .env("NARPUSH_JOBS", "many")
            .env("OUT_PATHS", "")
            .env("DRV_PATH", &drv),
    );
    assert!(hook.status.success(), "{}", stderr(&hook));
    let pending = std::fs::read_to_string(c.dir.join("state/pending")).unwrap();
    assert_eq!(pending, format!("{drv}\n"));
    // retry pushes the derivation's output, not the .drv file.
    let retry = nix::run(
        narpush()
            .env("HOME", &c.dir)
            .env("NARPUSH_STATE_DIR", c.dir.join("state"))
            .args(["retry", "--to", &c.url(), "--key-file"])
            .arg(&c.key),
    );
    assert!(retry.status.success(), "{}", stderr(&retry));
    let hash = |p: &str| p["/nix/store/".len()..][..32].to_string();
    assert!(
        c.cache.join(format!("{}.narinfo", hash(&out))).exists(),
        "{}",
        nix::stdout(&retry)
    );
    assert!(
        !c.cache.join(format!("{}.narinfo", hash(&drv))).exists(),
        "the .drv itself is not pushed"
    );
    let pending = std::fs::read_to_string(c.dir.join("state/pending")).unwrap();
    assert!(pending.is_empty(), "{pending}");
}
