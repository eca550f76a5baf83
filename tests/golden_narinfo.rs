//! narpush's narinfo against the one `nix copy --to file://` writes after
//! `nix store sign` with the same key: NarHash, NarSize, References, Deriver, CA and
//! the `Sig:` line must be identical (Ed25519 is deterministic, so the signature is
//! byte-identical), for a `nix-store --add` path and for every output of a built
//! two-output derivation with references; and the same against Nix 2.26's `nix copy`
//! in its chroot (`scripts/nix226.sh`), for outputs 2.26 built.
mod common;

use common::nix::{build, build_with, graph_expr, narpush, nix, nix_keypair, nonce, ok};
use common::nix226;
use common::s3server::temp_dir;
use narpush::nix::narinfo::NarInfo;
use std::path::Path;
use std::process::Command;

fn narinfo_of(cache: &Path, path: &str) -> NarInfo {
    let hash = &path.rsplit('/').next().unwrap()[..32];
    let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo")))
        .unwrap_or_else(|e| panic!("no narinfo for {path} in {}: {e}", cache.display()));
    NarInfo::parse(&text)
        .unwrap_or_else(|e| panic!("narinfo for {path} does not parse: {e}\n{text}"))
}

fn compare(paths: &[String], dir: &Path, compression: &str) {
    compare_with(narpush, nix, paths, dir, compression);
}

/// [`compare`] with the given narpush and nix commands (the host's, or 2.26's chroot).
fn compare_with(
    narpush: fn() -> Command,
    nix: fn() -> Command,
    paths: &[String],
    dir: &Path,
    compression: &str,
) {
    let (sec, _pk) = nix_keypair(dir, &format!("golden-{compression}-1"));
    let ours = dir.join("ours");
    let theirs = dir.join("theirs");
    // narpush first: the local store does not carry the key's signature yet.
    let mut cmd = narpush();
    cmd.args(["push", "--closure", "--compression", compression, "--to"])
        .arg(format!("file://{}", ours.display()))
        .arg("--key-file")
        .arg(&sec)
        .args(paths);
    ok(&mut cmd);
    ok(nix()
        .args(["store", "sign", "--key-file"])
        .arg(&sec)
        .args(paths));
    ok(nix()
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression={compression}",
            theirs.display()
        ))
        .args(paths));
    for p in paths {
        let (a, b) = (narinfo_of(&ours, p), narinfo_of(&theirs, p));
        assert_eq!(a.store_path, b.store_path);
        assert_eq!(a.nar_hash, b.nar_hash, "NarHash of {p}");
        assert_eq!(a.nar_size, b.nar_size, "NarSize of {p}");
        assert_eq!(a.references, b.references, "References of {p}");
        assert_eq!(a.deriver, b.deriver, "Deriver of {p}");
        assert_eq!(a.ca, b.ca, "CA of {p}");
        assert_eq!(a.compression, b.compression, "Compression of {p}");
        assert_eq!(a.sigs, b.sigs, "Sig lines of {p}");
        assert_eq!(a.sigs.len(), 1);
        if compression == "none" {
            // Uncompressed, the NAR file itself is identical, so is its name.
            assert_eq!(a.url, b.url);
            assert_eq!(a.file_hash, b.file_hash);
        }
    }
}

#[test]
fn added_path_matches_nix_copy() {
    let dir = temp_dir("golden-narinfo-add");
    let p = common::nix::add_file("golden-narinfo.txt", nonce("added").as_bytes());
    compare(&[p], &dir, "xz");
}

#[test]
fn built_outputs_with_references_match_nix_copy() {
    let dir = temp_dir("golden-narinfo-build");
    let tag = nonce("golden");
    let mut paths = build(&dir, &graph_expr(&tag), "app", &[], &[]);
    paths.extend(build(&dir, &graph_expr(&tag), "app.doc", &[], &[]));
    paths.extend(build(&dir, &graph_expr(&tag), "top", &[], &[]));
    paths.extend(build(&dir, &graph_expr(&tag), "dep", &[], &[]));
    assert_eq!(paths.len(), 4, "{paths:?}");
    compare(&paths, &dir, "zstd");
}

#[test]
fn uncompressed_nar_files_are_identical_to_nix_copy() {
    let dir = temp_dir("golden-narinfo-none");
    let tag = nonce("golden-none");
    let paths = build(&dir, &graph_expr(&tag), "top", &[], &[]);
    compare(&paths, &dir, "none");
}

#[test]
fn nix226_built_outputs_match_nix226_copy() {
    let dir = temp_dir("golden-narinfo-226");
    let tag = nonce("golden-226");
    let build_226 = |attr: &str| {
        build_with(
            nix226::cmd("nix-build"),
            &dir,
            &graph_expr(&tag),
            attr,
            &[],
            &[],
        )
    };
    let mut paths = build_226("app");
    paths.extend(build_226("app.doc"));
    paths.extend(build_226("top"));
    paths.extend(build_226("dep"));
    assert_eq!(paths.len(), 4, "{paths:?}");
    compare_with(nix226::narpush, nix226::nix, &paths, &dir, "zstd");
}
