//! The end-to-end core against a second real Nix: Debian 13's Nix 2.26, in the chroot
//! `scripts/nix226.sh` makes (`make test` makes it first; without it these tests fail
//! and say how to make it). Nix 2.26 builds, the host's narpush binary runs inside the
//! chroot and reads 2.26's store through 2.26's `nix path-info --json`, pushes to a
//! `file://` cache and to the real S3 server on 127.0.0.1 (the chroot shares the
//! host's network), runs as 2.26's post-build-hook (2.26 passes a non-empty
//! `OUT_PATHS`), and 2.26 substitutes the result into a fresh store with signatures
//! required and only narpush's key trusted. Also: 2.26's real `nix path-info --json`
//! (the fixture `tests/fixtures/path-info/nix-2.26.json`) reads as 2.8's does.

mod common;

use common::cache::{check_invariants, check_upload_order, in_root, narinfos};
use common::nix::{build_with, graph_expr, nix_keypair, nonce, realise_with, stderr, stdout};
use common::nix226;
use common::s3server::{temp_dir, S3Server};
use narpush::nix::narinfo::fingerprint;
use narpush::nix::pathinfo::{parse_path_info_json, PathInfo};
use narpush::nix::signing::PublicKey;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Build a fresh graph with 2.26 (`extra` passed to `nix-build`, `envs` set for it);
/// returns `top` and every path of its closure in 2.26's store.
fn build_graph(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (String, BTreeSet<String>) {
    let expr = graph_expr(&nonce("nix226"));
    let top = build_with(nix226::cmd("nix-build"), dir, &expr, "top", extra, envs).remove(0);
    let closure: BTreeSet<String> = common::nix::ok(nix226::cmd("nix-store").args(["-qR", &top]))
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(closure.len(), 4, "dep, app out and doc, top: {closure:?}");
    for p in &closure {
        assert!(
            nix226::on_host(p).symlink_metadata().is_ok(),
            "{p} is not in the 2.26 chroot's store"
        );
        // Only 2.26 has it: what narpush pushes below it read from 2.26.
        assert!(
            Path::new(p).symlink_metadata().is_err(),
            "{p} is in the host's store too"
        );
    }
    (top, closure)
}

fn require_ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Nix 2.26 substitutes `top` from `substituter` into a fresh store, signatures
/// required, only `public` trusted; checks the closure arrived.
fn substitute_226(substituter: &str, top: &str, closure: &BTreeSet<String>, public: &str) {
    let root = common::nix::fresh_root("nix226-client");
    let out = realise_with(nix226::cmd("nix-store"), substituter, &root, &[top], public);
    require_ok(
        &format!("2.26 nix-store --realise from {substituter}"),
        &out,
    );
    for p in closure {
        assert!(
            in_root(&root, p).symlink_metadata().is_ok(),
            "{p} missing from the 2.26 client store after substituting {top}"
        );
    }
    let run = std::fs::read_link(in_root(&root, top).join("run")).expect("top/run symlink");
    assert!(run.to_string_lossy().ends_with("/bin/app"), "{run:?}");
}

/// Every path of `closure` has a narinfo signed by `key_name`, and the cache is
/// consistent (references present, objects match FileSize/FileHash).
fn check_cache(cache: &Path, closure: &BTreeSet<String>, key_name: &str) {
    let infos = narinfos(cache);
    let cached: BTreeSet<String> = infos.keys().cloned().collect();
    assert_eq!(&cached, closure, "narinfos in {}", cache.display());
    for (path, info) in &infos {
        assert!(
            info.sigs
                .iter()
                .any(|s| s.starts_with(&format!("{key_name}:"))),
            "{path}: {:?}",
            info.sigs
        );
    }
    assert_eq!(check_invariants(cache), closure.len());
    check_upload_order(cache);
}

#[test]
fn nix226_built_paths_push_to_file_cache_and_nix226_substitutes() {
    let dir = temp_dir("nix226-file");
    let (sec, public) = nix_keypair(&dir, "narpush-226-1");
    let (top, closure) = build_graph(&dir, &[], &[]);
    let cache = dir.join("cache");
    let to = format!("file://{}", cache.display());
    let out = nix226::narpush()
        .args(["push", "--to", &to, "--key-file"])
        .arg(&sec)
        .arg(&top)
        .output()
        .expect("run narpush in the 2.26 chroot");
    let log = require_ok("narpush push (in the 2.26 chroot) to file://", &out);
    assert!(log.contains("4 pushed"), "{log}");
    check_cache(&cache, &closure, "narpush-226-1");
    substitute_226(&to, &top, &closure, &public);
}

#[test]
fn nix226_built_paths_push_to_s3_and_nix226_substitutes_over_http() {
    let dir = temp_dir("nix226-s3");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-226-1");
    let (top, closure) = build_graph(&dir, &[], &[]);
    let out = nix226::narpush()
        .args(["push", "--to", &s3.url("cache"), "--key-file"])
        .arg(&sec)
        .arg(&top)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .output()
        .expect("run narpush in the 2.26 chroot");
    let log = require_ok("narpush push (in the 2.26 chroot) to s3://", &out);
    assert!(log.contains("4 pushed"), "{log}\ns3s-fs log: {}", s3.log());
    let bucket = s3.bucket_dir("cache");
    check_cache(&bucket, &closure, "narpush-226-1");
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    let http = common::nix::HttpServer::serve(&bucket);
    substitute_226(&http.url(), &top, &closure, &public);
}

/// Config-file lines choosing how the hook runs: a hook queues by default; it is
/// kept synchronous here with `wait = true` (the queue is tested in tests/queue.rs).
const HOOK_MODE: &str = "wait = true\n";

/// The hook's whole configuration, in one file: the cache, key, credentials and
/// state directory, then [`HOOK_MODE`].
fn hook_config(dir: &Path, s3: &S3Server, sec: &Path) -> (PathBuf, PathBuf) {
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
    std::fs::write(
        &config,
        format!(
            "to = \"{}\"\nkey-file = [\"{}\"]\ncredentials-file = \"{}\"\nstate-dir = \"{}\"\n{HOOK_MODE}",
            s3.url("cache"),
            sec.display(),
            creds.display(),
            state.display()
        ),
    )
    .unwrap();
    (config, state)
}

#[test]
fn nix226_nix_build_runs_narpush_as_post_build_hook_with_out_paths() {
    let dir = temp_dir("nix226-hook");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-226-hook-1");
    let (config, state) = hook_config(&dir, &s3, &sec);
    // A wrapper that records what 2.26 hands the hook, then runs narpush as the hook.
    let seen = dir.join("out-paths.log");
    let hook = dir.join("hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$OUT_PATHS\" >> '{}'\nexec '{}'\n",
            seen.display(),
            env!("CARGO_BIN_EXE_narpush")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hook_s = hook.display().to_string();
    let config_s = config.display().to_string();
    let (top, closure) = build_graph(
        &dir,
        &["--option", "post-build-hook", &hook_s],
        &[("NARPUSH_CONFIG", &config_s)],
    );

    // 2.26 ran the hook once per build, each time with that build's outputs.
    let seen = std::fs::read_to_string(&seen).expect("the hook wrapper ran");
    let handed: BTreeSet<String> = seen.split_whitespace().map(String::from).collect();
    assert_eq!(handed, closure, "OUT_PATHS over the hook runs:\n{seen}");
    assert!(
        seen.lines().all(|l| !l.trim().is_empty()),
        "an empty OUT_PATHS:\n{seen}"
    );

    let bucket = s3.bucket_dir("cache");
    check_cache(&bucket, &closure, "narpush-226-hook-1");
    let pending = common::read_if_exists(&state.join("pending"));
    assert!(
        pending.trim().is_empty(),
        "pending after the hook: {pending}"
    );
    let http = common::nix::HttpServer::serve(&bucket);
    substitute_226(&http.url(), &top, &closure, &public);
}

/// The key `gen.sh` made when it wrote `nix-2.26.json` (README in that folder).
const FIXTURE_226_KEY: &str = "narpush-fixture-1:32NNzO/3YkQUhgdLjrGlOJXfXUY2FWffOQyKOv/kj+g=";

fn path_info_fixture(name: &str) -> (Vec<PathInfo>, Vec<String>) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/path-info")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    parse_path_info_json(&text, "/nix/store").unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Real `nix path-info --json` of 2.26 (made by `gen.sh` in the chroot) reads as the
/// same paths as real 2.8's, field for field; only the signature differs (another
/// key), and it verifies with that key over the fingerprint narpush computes.
#[test]
fn nix_2_26_path_info_json_fixture_reads_as_2_8s() {
    let (mut infos_226, invalid_226) = path_info_fixture("nix-2.26.json");
    let (mut infos_28, invalid_28) = path_info_fixture("nix-2.8.json");
    assert_eq!(invalid_226, invalid_28);
    assert_eq!(
        invalid_226,
        ["/nix/store/00000000000000000000000000000000-narpush-invalid"]
    );
    // 2.8 lists paths in argument order, 2.26 keyed and sorted by path.
    infos_226.sort_by(|a, b| a.path.cmp(&b.path));
    infos_28.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(infos_226.len(), 3);
    let key = PublicKey::parse(FIXTURE_226_KEY).unwrap();
    let mut signed = 0;
    for (new, old) in infos_226.iter_mut().zip(&infos_28) {
        assert_eq!(new.sigs.len(), old.sigs.len(), "{:?}", new.path);
        for sig in std::mem::take(&mut new.sigs) {
            let refs: Vec<String> = new
                .references
                .iter()
                .map(|r| r.to_full("/nix/store"))
                .collect();
            let fp = fingerprint(
                &new.path.to_full("/nix/store"),
                &new.nar_hash,
                new.nar_size,
                &refs,
            );
            assert!(key.verify(fp.as_bytes(), &sig), "{sig} over {fp}");
            signed += 1;
        }
        let old = PathInfo {
            sigs: vec![],
            ..old.clone()
        };
        assert_eq!(*new, old);
    }
    assert_eq!(signed, 1, "the refdemo path carries one signature");
}
