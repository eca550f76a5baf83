//! narpush's NAR bytes against `nix-store --dump` for a tree with every case the
//! format has: regular, executable (owner bit only), empty files; absolute, relative
//! and dangling symlinks; empty directories; deep nesting; names sorted by raw bytes,
//! unicode and non-UTF-8 names; a file larger than any buffer.
mod common;

use common::nix::ok;
use common::s3server::temp_dir;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn make_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("plain.txt"), b"hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // Group/other execute without owner execute: not executable in a NAR.
    fs::write(root.join("not-exec"), b"x").unwrap();
    fs::set_permissions(root.join("not-exec"), fs::Permissions::from_mode(0o654)).unwrap();
    fs::write(root.join("owner-exec-only"), b"y").unwrap();
    fs::set_permissions(
        root.join("owner-exec-only"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    symlink("/nix/store/absolute/target", root.join("abs-link")).unwrap();
    symlink("plain.txt", root.join("rel-link")).unwrap();
    symlink("../../does/not/exist", root.join("dangling")).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"bottom").unwrap();
    // Byte order: "0" < "Z" < "_" < "a~" < "z" < "é" (0xc3 0xa9) < 0xff 0xfe.
    let sorted = root.join("sorted");
    fs::create_dir(&sorted).unwrap();
    for name in [
        &b"z"[..],
        b"a~",
        b"_",
        b"Z",
        b"0",
        "é".as_bytes(),
        b"\xff\xfe",
        b"A.b",
        b"a",
    ] {
        fs::write(sorted.join(OsStr::from_bytes(name)), name).unwrap();
    }
    // Lengths around the 8-byte padding boundary.
    for n in 0..=17 {
        fs::write(sorted.join(format!("len{n:02}")), vec![b'p'; n]).unwrap();
    }
    // 3 MiB + 5 bytes of varied content: streamed, never read whole.
    let big: Vec<u8> = (0..(3 << 20) + 5)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(root.join("big.bin"), big).unwrap();
}

fn nix_dump(path: &Path) -> Vec<u8> {
    let out = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .output()
        .expect("run nix-store --dump (install nix: make deps)");
    assert!(
        out.status.success(),
        "nix-store --dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ours(path: &Path) -> Vec<u8> {
    narpush::nix::dump::dump_path(path, Vec::new()).unwrap()
}

#[test]
fn tree_matches_nix_store_dump() {
    let root = temp_dir("golden-nar").join("tree");
    make_tree(&root);
    let theirs = nix_dump(&root);
    let mine = ours(&root);
    assert_eq!(mine.len(), theirs.len());
    assert!(mine == theirs, "NAR bytes differ from nix-store --dump");
}

#[test]
fn single_file_and_symlink_roots_match() {
    let dir = temp_dir("golden-roots");
    fs::write(dir.join("f"), b"hello").unwrap();
    symlink("somewhere/else", dir.join("l")).unwrap();
    fs::write(dir.join("x"), b"").unwrap();
    fs::set_permissions(dir.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["f", "l", "x"] {
        assert_eq!(
            ours(&dir.join(name)),
            nix_dump(&dir.join(name)),
            "root {name}"
        );
    }
}

#[test]
fn store_paths_hash_as_nix_records() {
    // The NarHash narpush computes equals what the local Nix database recorded.
    let p = common::nix::add_file("golden-hash.txt", b"golden\n");
    let recorded = ok(Command::new("nix-store").args(["-q", "--hash", &p]))
        .trim()
        .to_string();
    let nar = ours(Path::new(&p));
    use sha2::Digest;
    let h: [u8; 32] = sha2::Sha256::digest(&nar).into();
    assert_eq!(
        format!("sha256:{}", narpush::nix::nixbase32::encode(&h)),
        recorded
    );
}

#[test]
fn committed_golden_matches() {
    // tests/fixtures/nar/tree.nar was made by `nix-store --dump` of the tree that
    // tests/fixtures/nar/make-tree.sh creates (see tests/fixtures/nar/README.md).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nar");
    let dir = temp_dir("golden-committed");
    ok(Command::new("sh")
        .arg(fixtures.join("make-tree.sh"))
        .arg(dir.join("t")));
    let golden = fs::read(fixtures.join("tree.nar")).unwrap();
    assert!(
        ours(&dir.join("t")) == golden,
        "NAR differs from the committed nix-store --dump output"
    );
}

#[test]
fn unsupported_file_types_are_refused_with_the_path() {
    let dir = temp_dir("golden-fifo");
    let fifo = dir.join("pipe");
    ok(Command::new("mkfifo").arg(&fifo));
    let e = narpush::nix::dump::dump_path(&dir, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pipe") && e.contains("FIFO"), "{e}");
}
