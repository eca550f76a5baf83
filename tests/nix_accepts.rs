//! Real Nix must accept the cache narpush writes — signatures required, only
//! narpush's key trusted, into a fresh chroot store — for every compression; and
//! must reject it when a narinfo or a NAR is changed by one byte. A store path whose
//! contents no longer match the Nix database is refused before anything is written.
mod common;

use common::nix::{build, copy_from, graph_expr, narpush, nix_keypair, nonce, ok, run, stderr};
use common::s3server::temp_dir;
use std::fs;
use std::path::Path;
use std::process::Command;

fn push_file(cache: &Path, key: &Path, compression: &str, paths: &[String]) -> String {
    let mut cmd = narpush();
    cmd.args(["push", "--compression", compression, "--to"])
        .arg(format!("file://{}", cache.display()))
        .arg("--key-file")
        .arg(key)
        .args(paths);
    ok(&mut cmd)
}

fn graph(dir: &Path, what: &str) -> (String, String) {
    let tag = nonce(what);
    let top = build(dir, &graph_expr(&tag), "top", &[], &[]).remove(0);
    let dep = build(dir, &graph_expr(&tag), "dep", &[], &[]).remove(0);
    (top, dep)
}

#[test]
fn nix_substitutes_what_narpush_wrote_for_every_compression() {
    for compression in ["zstd", "xz", "none"] {
        let dir = temp_dir(&format!("accept-{compression}"));
        let (sec, pk) = nix_keypair(&dir, &format!("accept-{compression}-1"));
        let (top, dep) = graph(&dir, compression);
        let cache = dir.join("cache");
        let out = push_file(&cache, &sec, compression, std::slice::from_ref(&top));
        // top, app (out), app's doc output and dep: locally built, so all pushed.
        assert!(out.contains("4 pushed"), "{out}");
        let root = dir.join("root");
        let copied = copy_from(&format!("file://{}", cache.display()), &root, &[&top], &pk);
        assert!(
            copied.status.success(),
            "{compression}: nix copy failed: {}",
            stderr(&copied)
        );
        let rel = |p: &str| root.join(p.trim_start_matches('/'));
        assert!(
            rel(&top).join("run").symlink_metadata().is_ok(),
            "{compression}: top not in the fresh store"
        );
        assert!(
            rel(&dep).is_file(),
            "{compression}: dependency not substituted"
        );
        // The client store verifies what it holds.
        let verify = run(Command::new("nix-store")
            .arg("--store")
            .arg(&root)
            .args(["--verify", "--check-contents"]));
        assert!(verify.status.success(), "{}", stderr(&verify));
    }
}

#[test]
fn a_key_nix_does_not_trust_is_rejected() {
    let dir = temp_dir("accept-untrusted");
    let (sec, _) = nix_keypair(&dir, "accept-untrusted-1");
    let (_, other_pk) = nix_keypair(&dir, "accept-other-1");
    let (top, _) = graph(&dir, "untrusted");
    let cache = dir.join("cache");
    push_file(&cache, &sec, "zstd", std::slice::from_ref(&top));
    let copied = copy_from(
        &format!("file://{}", cache.display()),
        &dir.join("root"),
        &[&top],
        &other_pk,
    );
    assert!(
        !copied.status.success(),
        "nix accepted a path signed by an untrusted key"
    );
    assert!(
        stderr(&copied).contains("lacks a valid signature"),
        "{}",
        stderr(&copied)
    );
}

fn narinfo_path(cache: &Path, store_path: &str) -> std::path::PathBuf {
    cache.join(format!(
        "{}.narinfo",
        &store_path.rsplit('/').next().unwrap()[..32]
    ))
}

#[test]
fn a_narinfo_changed_by_one_byte_is_rejected() {
    let dir = temp_dir("accept-tamper-narinfo");
    let (sec, pk) = nix_keypair(&dir, "tamper-narinfo-1");
    let (_, dep) = graph(&dir, "tamper-narinfo");
    let cache = dir.join("cache");
    push_file(&cache, &sec, "none", std::slice::from_ref(&dep));
    let ni = narinfo_path(&cache, &dep);
    let text = fs::read_to_string(&ni).unwrap();
    let size_line = text.lines().find(|l| l.starts_with("NarSize: ")).unwrap();
    let size: u64 = size_line["NarSize: ".len()..].parse().unwrap();
    // One digit changes: the signature no longer covers it.
    fs::write(
        &ni,
        text.replace(size_line, &format!("NarSize: {}", size + 1)),
    )
    .unwrap();
    let copied = copy_from(
        &format!("file://{}", cache.display()),
        &dir.join("root"),
        &[&dep],
        &pk,
    );
    assert!(!copied.status.success(), "nix accepted a tampered narinfo");
    assert!(
        stderr(&copied).contains("lacks a valid signature"),
        "{}",
        stderr(&copied)
    );
}

#[test]
fn a_nar_changed_by_one_byte_is_rejected() {
    let dir = temp_dir("accept-tamper-nar");
    let (sec, pk) = nix_keypair(&dir, "tamper-nar-1");
    let (_, dep) = graph(&dir, "tamper-nar");
    let cache = dir.join("cache");
    push_file(&cache, &sec, "none", std::slice::from_ref(&dep));
    let text = fs::read_to_string(narinfo_path(&cache, &dep)).unwrap();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let nar = cache.join(url);
    let mut bytes = fs::read(&nar).unwrap();
    // The file's contents start after the "contents" token and the length; flip a
    // byte of the file body (the NAR stays well-formed).
    let pos = bytes.windows(8).position(|w| w == b"contents").unwrap() + 16;
    bytes[pos] ^= 0x01;
    fs::write(&nar, bytes).unwrap();
    let copied = copy_from(
        &format!("file://{}", cache.display()),
        &dir.join("root"),
        &[&dep],
        &pk,
    );
    assert!(!copied.status.success(), "nix accepted a tampered NAR");
    assert!(
        stderr(&copied).contains("hash mismatch"),
        "{}",
        stderr(&copied)
    );
}

#[test]
fn a_corrupted_store_path_is_refused_and_nothing_is_written() {
    let dir = temp_dir("accept-corrupt");
    let (sec, _) = nix_keypair(&dir, "corrupt-1");
    let p = common::nix::add_file("narpush-corrupt.txt", nonce("corrupt").as_bytes());
    let recorded = ok(Command::new("nix-store").args(["-q", "--hash", &p]))
        .trim()
        .to_string();
    // Corrupt it behind Nix's back (root can), as a failing disk would.
    let mut perms = fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&p, perms).unwrap();
    fs::write(&p, b"bit rot").unwrap();
    let cache = dir.join("cache");
    let mut cmd = narpush();
    cmd.args(["push", "--to"])
        .arg(format!("file://{}", cache.display()))
        .arg("--key-file")
        .arg(&sec)
        .arg(&p);
    let out = run(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&recorded),
        "error must name the recorded hash {recorded}: {err}"
    );
    assert!(err.contains("corrupted") && err.contains(&p), "{err}");
    let nars: Vec<_> = fs::read_dir(cache.join("nar")).unwrap().collect();
    assert!(
        nars.is_empty(),
        "a NAR (or temporary file) was left behind: {nars:?}"
    );
    assert!(!narinfo_path(&cache, &p).exists());
    // Leave the store consistent for other tests: remove the corrupted path.
    let _ = Command::new("nix-store").args(["--delete", &p]).output();
}

/// Deterministic text-like bytes (words of a small vocabulary in a pseudo-random
/// order): compressible as logs and sources are, without long exact repeats.
fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "store",
        "path",
        "narinfo",
        "derivation",
        "output",
        "closure",
        "signature",
        "bucket",
        "reference",
        "compression",
        "hash",
        "nix",
        "build",
        "cache",
        "upload",
        "\n",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x >> 60) as usize].as_bytes());
        out.push(if x & 7 == 0 { b',' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn file_size(cache: &Path) -> (u64, String) {
    let narinfo = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .expect("a narinfo in the cache");
    let text = fs::read_to_string(&narinfo).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    };
    (field("FileSize: ").parse().unwrap(), field("URL: "))
}

/// A NAR large enough to be compressed on several threads is one xz stream of
/// several blocks that real Nix substitutes with signatures required, no more than
/// 1% larger than the single-threaded xz `nix copy` writes for the same path. At
/// preset 1 (1 MiB dictionary, so a 20 MiB NAR makes several blocks quickly);
/// `make bench` compares the default preset on real paths.
#[test]
fn multithreaded_xz_is_accepted_and_as_small_as_nix_copys() {
    let dir = temp_dir("accept-xz-mt");
    let (sec, pk) = nix_keypair(&dir, "accept-xz-mt-1");
    let path = common::nix::add_file("xz-mt-text", &text(20 << 20));
    let ours = dir.join("ours");
    ok(narpush()
        .args([
            "push",
            "--no-deps",
            "--compression",
            "xz",
            "--compression-level",
            "1",
        ])
        .args(["--compression-threads", "2", "--to"])
        .arg(format!("file://{}", ours.display()))
        .arg("--key-file")
        .arg(&sec)
        .arg(&path));
    let theirs = dir.join("theirs");
    ok(common::nix::nix()
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression=xz&compression-level=1",
            theirs.display()
        ))
        .arg(&path));
    let ((our_size, url), (their_size, _)) = (file_size(&ours), file_size(&theirs));
    assert!(
        our_size * 100 <= their_size * 101,
        "narpush's xz is {our_size} bytes, nix copy's {their_size}: more than 1% larger"
    );
    let listing = ok(Command::new("xz")
        .args(["--list", "--robot"])
        .arg(ours.join(&url)));
    let blocks: u64 = listing
        .lines()
        .find_map(|l| l.strip_prefix("file\t"))
        .and_then(|l| l.split('\t').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no block count in xz --list: {listing}"));
    assert!(blocks >= 2, "one NAR, {blocks} block(s): not multithreaded");
    let root = dir.join("root");
    let copied = copy_from(&format!("file://{}", ours.display()), &root, &[&path], &pk);
    assert!(
        copied.status.success(),
        "nix copy failed: {}",
        stderr(&copied)
    );
    let verify = run(Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .args(["--verify", "--check-contents"]));
    assert!(verify.status.success(), "{}", stderr(&verify));
    eprintln!("xz of a 20 MiB text NAR: narpush {our_size} bytes in {blocks} blocks, nix copy {their_size}");
}
