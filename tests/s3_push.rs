//! `narpush push` by hand to a real S3 server (s3s-fs), read back by real Nix: the
//! bucket's directory is served over HTTP and a fresh chroot store substitutes from
//! it with signatures required and only narpush's key trusted.

mod common;

use common::cache::{
    cached_paths, check_invariants, check_upload_order, closure, in_root, narinfos, snapshot,
};
use common::nix::{
    build, graph_expr, narpush, nix, nix_keypair, nonce, ok, realise_from, stderr, stdout,
    HttpServer,
};
use common::s3server::{temp_dir, S3Server};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

/// `narpush push --to URL --key-file KEY ARGS…` with credentials from the environment.
fn push_command(s3: &S3Server, to: &str, key: &Path, args: &[&str]) -> Command {
    let mut c = narpush();
    c.args(["push", "--to", to, "--key-file"])
        .arg(key)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    c
}

fn push(s3: &S3Server, to: &str, key: &Path, args: &[&str]) -> Output {
    push_command(s3, to, key, args)
        .output()
        .expect("run narpush")
}

fn push_ok(s3: &S3Server, to: &str, key: &Path, args: &[&str]) -> String {
    let out = push(s3, to, key, args);
    assert!(
        out.status.success(),
        "narpush {args:?} failed ({}):\nstdout: {}\nstderr: {}\ns3s-fs log: {}",
        out.status,
        stdout(&out),
        stderr(&out),
        s3.log()
    );
    stdout(&out)
}

/// Substitute `paths` from the bucket over HTTP into a fresh store; panics on failure.
fn substitute(dir: &Path, paths: &[&str], public_key: &str) -> std::path::PathBuf {
    let http = HttpServer::serve(dir);
    let root = common::nix::fresh_root("client");
    let out = realise_from(&http.url(), &root, paths, public_key);
    assert!(
        out.status.success(),
        "nix-store --realise {paths:?} from the bucket failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    for p in paths {
        assert!(
            in_root(&root, p).symlink_metadata().is_ok(),
            "{p} missing from the client store after substitution"
        );
    }
    root
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|s| s.to_string()).collect()
}

/// A fresh graph; returns (top, app out, app doc, dep).
fn fresh_graph(dir: &Path) -> (String, String, String, String) {
    let expr = graph_expr(&nonce("graph"));
    let top = build(dir, &expr, "top", &[], &[]).remove(0);
    let out = build(dir, &expr, "app", &[], &[]).remove(0);
    let doc = build(dir, &expr, "app.doc", &[], &[]).remove(0);
    let dep = build(dir, &expr, "dep", &[], &[]).remove(0);
    assert!(doc.ends_with("-narpush-app-doc"), "{doc}");
    (top, out, doc, dep)
}

fn push_graph_and_substitute(compression: &str, ext: &str) {
    let dir = temp_dir(&format!("push-{compression}"));
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    let (top, out, doc, dep) = fresh_graph(&dir);

    let log = push_ok(
        &s3,
        &s3.url("cache"),
        &sec,
        &["--compression", compression, &top],
    );
    let bucket = s3.bucket_dir("cache");
    assert_eq!(
        std::fs::read_to_string(bucket.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let expected = set(&[&top, &out, &doc, &dep]);
    assert_eq!(closure(&[&top]), expected, "the graph's closure");
    assert_eq!(cached_paths(&bucket), expected, "push log:\n{log}");
    for (path, info) in narinfos(&bucket) {
        assert_eq!(info.compression, compression, "{path}");
        assert!(info.url.starts_with("nar/"), "{path}: {}", info.url);
        assert!(
            info.url.ends_with(&format!(".nar{ext}")),
            "{path}: {}",
            info.url
        );
        assert!(
            info.sigs.iter().any(|s| s.starts_with("narpush-test-1:")),
            "{path}: {:?}",
            info.sigs
        );
    }
    assert_eq!(check_invariants(&bucket), 4);
    check_upload_order(&bucket);
    let nars: BTreeSet<String> = narinfos(&bucket).values().map(|i| i.url.clone()).collect();
    let objects: BTreeSet<String> = snapshot(&bucket.join("nar"))
        .into_keys()
        .map(|k| format!("nar/{k}"))
        .collect();
    assert_eq!(objects, nars, "exactly one NAR object per narinfo");

    let root = substitute(&bucket, &[&top], &public);
    for p in [&out, &doc, &dep] {
        assert!(in_root(&root, p).exists(), "{p} not substituted with top");
    }
    let script = std::fs::read_to_string(in_root(&root, &out).join("bin/app")).unwrap();
    assert!(script.contains(&dep), "{script}");
}

#[test]
fn push_zstd_pulls_in_missing_deps_and_nix_substitutes() {
    push_graph_and_substitute("zstd", ".zst");
}

#[test]
fn push_xz_pulls_in_missing_deps_and_nix_substitutes() {
    push_graph_and_substitute("xz", ".xz");
}

#[test]
fn push_none_pulls_in_missing_deps_and_nix_substitutes() {
    push_graph_and_substitute("none", "");
}

/// Incompressible bytes, from a small xorshift generator seeded per call.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn multipart_nar_round_trips_and_second_push_uploads_nothing() {
    let dir = temp_dir("push-multipart");
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    let data = random_bytes(13 << 20);
    let path = common::nix::add_file(&nonce("random"), &data);
    let to = format!("{}&multipart-chunk-size=5242880", s3.url("big"));

    push_ok(&s3, &to, &sec, &["--compression", "none", &path]);
    let bucket = s3.bucket_dir("big");
    let infos = narinfos(&bucket);
    let info = &infos[&path];
    assert!(info.nar_size > 12 << 20, "NarSize {}", info.nar_size);
    assert_eq!(info.file_size, Some(info.nar_size), "none: file is the NAR");
    // Larger than one part: streamed as a multipart upload under a per-upload name.
    let nar_hash = narpush::nix::nixbase32::encode(&info.nar_hash);
    assert!(
        info.url.starts_with(&format!("nar/{nar_hash}-")) && info.url.ends_with(".nar"),
        "{}",
        info.url
    );
    assert_eq!(check_invariants(&bucket), 1);
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );

    let root = substitute(&bucket, &[&path], &public);
    let got = std::fs::read(in_root(&root, &path)).unwrap();
    assert!(got == data, "substituted file differs from the original");

    // Again: nothing new is uploaded.
    let before = snapshot(&s3.root);
    let log = push_ok(
        &s3,
        &to,
        &sec,
        &["--compression", "none", "--verbose", &path],
    );
    assert!(
        log.contains(&format!("skipped {path}: already in the cache")),
        "{log}"
    );
    assert!(!log.contains("pushed /nix/store"), "{log}");
    assert_eq!(snapshot(&s3.root), before, "second push changed the bucket");
}

#[test]
fn no_deps_pushes_exactly_the_given_path() {
    let dir = temp_dir("push-nodeps");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let (top, _, _, _) = fresh_graph(&dir);
    push_ok(&s3, &s3.url("cache"), &sec, &["--no-deps", &top]);
    assert_eq!(cached_paths(&s3.bucket_dir("cache")), set(&[&top]));
}

#[test]
fn no_deps_asks_the_cache_first_and_starts_no_nix_when_it_has_every_path() {
    let dir = temp_dir("push-nodeps-cached");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let (top, out, _, _) = fresh_graph(&dir);
    // `nix` on PATH is a wrapper that notes each run, then runs the real one.
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v nix"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(!real.is_empty(), "nix is not on PATH");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let runs = dir.join("nix-runs");
    let wrapper = bin.join("nix");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\nexec '{real}' \"$@\"\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let o = push_command(&s3, &s3.url("cache"), &sec, args)
            .env("PATH", &path)
            .output()
            .expect("run narpush");
        assert!(o.status.success(), "narpush {args:?}: {}", stderr(&o));
        let n = common::read_if_exists(&runs).lines().count();
        let _ = std::fs::remove_file(&runs);
        (stdout(&o), n)
    };
    // New: one `nix` run for the whole push.
    let (_, n) = run(&["--no-deps", &top]);
    assert_eq!(n, 1, "a push runs one nix child process");
    // Cached: the HEAD answers it, no nix at all.
    let (log, n) = run(&["--no-deps", &top]);
    assert_eq!(n, 0, "a --no-deps push of a cached path ran nix: {log}");
    assert!(
        log.contains("0 pushed") && log.contains("1 already cached"),
        "{log}"
    );
    // One cached, one new: nix runs once, and only the new path goes up.
    let (_, n) = run(&["--no-deps", &top, &out]);
    assert_eq!(n, 1);
    assert_eq!(cached_paths(&s3.bucket_dir("cache")), set(&[&top, &out]));
    // Without --no-deps the closure must be checked: nix runs.
    let (_, n) = run(&[&top]);
    assert_eq!(n, 1);
}

#[test]
fn upstream_signed_dependency_is_skipped_unless_closure() {
    let dir = temp_dir("push-upstream");
    let s3 = S3Server::start();
    s3.create_bucket("default");
    s3.create_bucket("closure");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    let (up_sec, _) = nix_keypair(&dir, "up-1");
    let (top, out, doc, dep) = fresh_graph(&dir);
    ok(nix()
        .args(["store", "sign", "--key-file"])
        .arg(&up_sec)
        .arg(&dep));

    let log = push_ok(
        &s3,
        &s3.url("default"),
        &sec,
        &["--upstream-key", "up-1", "--verbose", &top],
    );
    assert!(
        log.contains(&format!("skipped {dep}: signed by an upstream cache")),
        "{log}"
    );
    let bucket = s3.bucket_dir("default");
    assert_eq!(cached_paths(&bucket), set(&[&top, &out, &doc]), "{log}");

    push_ok(
        &s3,
        &s3.url("closure"),
        &sec,
        &["--upstream-key", "up-1", "--closure", &top],
    );
    let bucket = s3.bucket_dir("closure");
    assert_eq!(cached_paths(&bucket), set(&[&top, &out, &doc, &dep]));
    let infos = narinfos(&bucket);
    let sigs: Vec<&str> = infos[&dep]
        .sigs
        .iter()
        .map(|s| s.split(':').next().unwrap())
        .collect();
    assert_eq!(sigs, ["narpush-test-1", "up-1"], "both signatures kept");
    assert_eq!(check_invariants(&bucket), 4);
    substitute(&bucket, &[&top], &public);
}

#[test]
fn narinfo_order_invariant_holds_for_a_deep_closure() {
    // Several graphs pushed at once with many jobs: every narinfo's references and
    // NAR object are in place.
    let dir = temp_dir("push-invariant");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    let tops: Vec<String> = (0..3)
        .map(|i| {
            let d = dir.join(i.to_string());
            std::fs::create_dir_all(&d).unwrap();
            fresh_graph(&d).0
        })
        .collect();
    let mut args: Vec<&str> = vec!["--jobs", "8"];
    args.extend(tops.iter().map(String::as_str));
    push_ok(&s3, &s3.url("cache"), &sec, &args);
    let bucket = s3.bucket_dir("cache");
    let roots: Vec<&str> = tops.iter().map(String::as_str).collect();
    assert_eq!(cached_paths(&bucket), closure(&roots));
    assert_eq!(check_invariants(&bucket), 12);
    check_upload_order(&bucket);
    substitute(&bucket, &roots, &public);
}

#[test]
fn wrong_credentials_fail_loudly() {
    let dir = temp_dir("push-badcreds");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let path = common::nix::add_file(&nonce("creds"), b"x");
    let out = narpush()
        .args(["push", "--to", &s3.url("cache"), "--key-file"])
        .arg(&sec)
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("HTTP 403"), "{}", stderr(&out));
    assert!(cached_paths(&s3.bucket_dir("cache")).is_empty());
}

#[test]
fn tricky_tree_and_self_reference_round_trip() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = temp_dir("push-tricky");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    // Names whose byte order differs from other orders, a non-UTF-8 name, empty
    // file and directory, executables, dangling and relative symlinks.
    let tree = dir.join(nonce("tree"));
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::create_dir_all(tree.join("empty-dir")).unwrap();
    for name in ["a.b", "a-b", "B", "a0", "Z z", "é"] {
        std::fs::write(tree.join(name), name).unwrap();
    }
    std::fs::write(
        tree.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")),
        b"x",
    )
    .unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::fs::write(tree.join("a/b/c/run"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        tree.join("a/b/c/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("a/b/c/run", tree.join("link")).unwrap();
    symlink("/nonexistent/target", tree.join("dangling")).unwrap();
    let added = ok(Command::new("nix-store").arg("--add").arg(&tree))
        .trim()
        .to_string();

    // A derivation output that refers to itself.
    let expr = format!(
        r#"derivation {{ name = "narpush-self"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir $out; echo $out > $out/me; ln -s $out/me $out/again" ]; tag = "{}"; }}"#,
        nonce("self")
    );
    let me = build(&dir, &expr, "", &[], &[]).remove(0);
    assert!(closure(&[&me]).len() == 1);

    push_ok(&s3, &s3.url("cache"), &sec, &[&added, &me]);
    let bucket = s3.bucket_dir("cache");
    let infos = narinfos(&bucket);
    let base = me.rsplit('/').next().unwrap();
    assert_eq!(infos[&me].references, [base], "self reference kept");
    assert_eq!(check_invariants(&bucket), 2);
    let root = substitute(&bucket, &[&added, &me], &public);
    let got = in_root(&root, &added);
    assert_eq!(
        std::fs::read(got.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"))).unwrap(),
        b"x"
    );
    assert_eq!(
        std::fs::read_link(got.join("dangling")).unwrap(),
        Path::new("/nonexistent/target")
    );
}

#[test]
fn zstd_multipart_with_parallel_compression_round_trips() {
    // At least 16 MiB: zstd compresses with every core; incompressible, so the
    // compressed NAR spans several 5 MiB parts.
    let dir = temp_dir("push-zstd-big");
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let (sec, public) = nix_keypair(&dir, "narpush-test-1");
    let data = random_bytes(17 << 20);
    let path = common::nix::add_file(&nonce("random-zstd"), &data);
    let to = format!("{}&multipart-chunk-size=5242880", s3.url("big"));
    push_ok(&s3, &to, &sec, &[&path]);
    let bucket = s3.bucket_dir("big");
    let info = &narinfos(&bucket)[&path];
    assert!(info.url.ends_with(".nar.zst"), "{}", info.url);
    assert!(info.file_size.unwrap() > 10 << 20);
    assert_eq!(check_invariants(&bucket), 1);
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    let root = substitute(&bucket, &[&path], &public);
    assert!(std::fs::read(in_root(&root, &path)).unwrap() == data);
}

#[test]
fn credentials_file_in_env_format() {
    let dir = temp_dir("push-credfile");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let creds = dir.join("creds.env");
    std::fs::write(
        &creds,
        format!(
            "# for narpush\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=\"{}\"\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let path = common::nix::add_file(&nonce("credfile"), b"credentials from a file\n");
    let out = narpush()
        .args(["push", "--to", &s3.url("cache"), "--key-file"])
        .arg(&sec)
        .arg("--credentials-file")
        .arg(&creds)
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cached_paths(&s3.bucket_dir("cache")), set(&[&path]));
}

#[test]
fn corrupted_store_path_is_refused_and_nothing_uploaded() {
    let dir = temp_dir("push-corrupt");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let path = common::nix::add_file(&nonce("corrupt"), b"the original contents\n");
    // Change the file behind Nix's back (same length, so only the hash differs).
    let f = Path::new(&path);
    let mut perms = std::fs::metadata(f).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o644);
    std::fs::set_permissions(f, perms.clone()).unwrap();
    std::fs::write(f, b"the ORIGINAL contents\n").unwrap();
    perms.set_mode(0o444);
    std::fs::set_permissions(f, perms).unwrap();

    let out = push(
        &s3,
        &s3.url("cache"),
        &sec,
        &["--compression", "none", &path],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is corrupted"), "{}", stderr(&out));
    let bucket = s3.bucket_dir("cache");
    assert!(cached_paths(&bucket).is_empty());
    // No nar/ directory at all is no NAR; any other failure to read it fails.
    let nar_dir = bucket.join("nar");
    let nars: Vec<_> = match std::fs::read_dir(&nar_dir) {
        Ok(d) => d
            .map(|e| {
                e.unwrap_or_else(|e| panic!("read {}: {e}", nar_dir.display()))
                    .file_name()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", nar_dir.display()),
    };
    assert!(nars.is_empty(), "NAR objects left behind: {nars:?}");
}

#[test]
fn a_reference_whose_presence_cannot_be_checked_blocks_its_referrers() {
    // The server cannot answer HEAD for dep's narinfo (s3s-fs fails on corrupt
    // metadata files beside the object): dep fails, and nothing that refers to it
    // may be pushed, or the cache would hold narinfos whose closure is incomplete.
    let dir = temp_dir("push-head-fails");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, _) = nix_keypair(&dir, "narpush-test-1");
    let (top, out, doc, dep) = fresh_graph(&dir);
    let bucket = s3.bucket_dir("cache");
    let key = format!("{}.narinfo", &dep.rsplit('/').next().unwrap()[..32]);
    let b64 = |s: &str| {
        narpush::encoding::base64_encode(s.as_bytes())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    std::fs::write(bucket.join(&key), b"not a narinfo\n").unwrap();
    for kind in ["metadata", "internal"] {
        std::fs::write(
            s3.root.join(format!(
                ".bucket-{}.object-{}.{kind}.json",
                b64("cache"),
                b64(&key)
            )),
            b"{ corrupt",
        )
        .unwrap();
    }

    let run = push(&s3, &s3.url("cache"), &sec, &[&top]);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(
        stderr(&run).contains(&format!("failed {dep}")),
        "{}",
        stderr(&run)
    );
    std::fs::remove_file(bucket.join(&key)).unwrap();
    let cached = cached_paths(&bucket);
    assert!(cached.contains(&doc), "{cached:?}");
    for p in [&top, &out] {
        assert!(
            !cached.contains(p),
            "{p} was pushed although its reference {dep} could not be checked:\n{}",
            stderr(&run)
        );
    }
}
