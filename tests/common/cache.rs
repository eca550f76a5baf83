//! What a binary cache directory holds, checked the way a client would see it: the
//! narinfos in a bucket's directory (s3s-fs keeps objects as plain files), their
//! references and NAR objects, and closures as the local Nix reports them.
#![allow(dead_code)]

use narpush::nix::narinfo::NarInfo;
use narpush::nix::nixbase32;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::nix::ok;

/// Every `<hash>.narinfo` in `dir`, parsed, keyed by full store path.
pub fn narinfos(dir: &Path) -> BTreeMap<String, NarInfo> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".narinfo") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .unwrap_or_else(|e| panic!("read {}: {e}", entry.path().display()));
        let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        let hash = info
            .store_path
            .rsplit('/')
            .next()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(format!("{hash}.narinfo"), name, "narinfo name vs StorePath");
        out.insert(info.store_path.clone(), info);
    }
    out
}

/// The store paths with a narinfo in `dir`.
pub fn cached_paths(dir: &Path) -> BTreeSet<String> {
    narinfos(dir).into_keys().collect()
}

/// The invariants a reader relies on: every narinfo's references have narinfos, and
/// every narinfo's URL names an object of FileSize bytes whose SHA-256 is FileHash.
/// Returns the number of narinfos checked.
pub fn check_invariants(dir: &Path) -> usize {
    let infos = narinfos(dir);
    let bases: BTreeSet<String> = infos
        .keys()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    for (path, info) in &infos {
        for r in &info.references {
            assert!(
                bases.contains(r),
                "{path} refers to {r}, which has no narinfo in {}",
                dir.display()
            );
        }
        let obj = dir.join(&info.url);
        let bytes = std::fs::read(&obj)
            .unwrap_or_else(|e| panic!("{path}: URL {} unreadable: {e}", info.url));
        assert_eq!(
            Some(bytes.len() as u64),
            info.file_size,
            "{path}: FileSize vs object {}",
            info.url
        );
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(
            info.file_hash.map(|h| nixbase32::encode(&h)),
            Some(nixbase32::encode(&digest)),
            "{path}: FileHash vs sha256 of object {}",
            info.url
        );
    }
    infos.len()
}

/// `nix-store -qR`: the closure of `paths` in the local store.
pub fn closure(paths: &[&str]) -> BTreeSet<String> {
    ok(Command::new("nix-store").arg("-qR").args(paths))
        .lines()
        .map(String::from)
        .collect()
}

/// Every file under `dir` (relative name, size, mtime): to see that nothing changed.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let e = e.unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
            let m = e
                .metadata()
                .unwrap_or_else(|err| panic!("stat {}: {err}", e.path().display()));
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, (m.len(), m.modified().expect("mtime")));
            }
        }
    }
    out
}

/// The path of `store_path` inside a chroot store at `root`.
pub fn in_root(root: &Path, store_path: &str) -> std::path::PathBuf {
    root.join(store_path.trim_start_matches('/'))
}

/// For a cache written by one process: every narinfo was written after its NAR
/// object and after the narinfos of its references (file modification times, which
/// s3s-fs sets when it stores an object), so no reader ever saw a narinfo whose
/// closure was incomplete. Paths with the same contents share one NAR object, which
/// each of their pushes writes again (same bytes): its last write must come before
/// the last of their narinfos.
pub fn check_upload_order(dir: &Path) {
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("mtime of {}: {e}", p.display()))
    };
    let narinfo_file =
        |base: &str| dir.join(format!("{}.narinfo", base.split('-').next().unwrap()));
    let mut sharers: std::collections::BTreeMap<String, Vec<(String, std::time::SystemTime)>> =
        std::collections::BTreeMap::new();
    for (path, info) in narinfos(dir) {
        let base = path.rsplit('/').next().unwrap();
        let me = mtime(&narinfo_file(base));
        sharers
            .entry(info.url.clone())
            .or_default()
            .push((path.clone(), me));
        for r in info.references.iter().filter(|r| *r != base) {
            assert!(
                mtime(&narinfo_file(r)) <= me,
                "{path}: narinfo written before that of its reference {r}"
            );
        }
    }
    for (url, narinfos) in sharers {
        let (path, last) = narinfos.iter().max_by_key(|(_, t)| *t).unwrap();
        assert!(
            mtime(&dir.join(&url)) <= *last,
            "{path}: narinfo written before its NAR {url} (shared by {} paths)",
            narinfos.len()
        );
    }
}
