//! `LocalNix` and `resolve_user_path` against the real Nix installed on this machine
//! (no mocks): paths are made with `nix-store --add` and `nix-build`, and what
//! narpush reads is compared with what `nix-store --query` says. Without `nix` on
//! PATH every test here fails, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use narpush::nix::hash::parse_hash_any;
use narpush::nix::local::LocalNix;
use narpush::nix::store_path::StorePath;
use narpush::nix::user_path::resolve_user_path;

mod common;

/// Options that let `nix-build` run as root without a daemon, sandbox or network.
use common::nix::NIX_OPTS as BUILD_OPTS;

fn local_nix() -> LocalNix {
    LocalNix::detect().unwrap_or_else(|e| {
        panic!(
            "these tests need the Nix command-line tools (nix, nix-store, nix-build) on PATH: {e}"
        )
    })
}

/// Run a command and return its trimmed stdout; panic with its stderr on failure.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is Nix installed and on PATH?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A fresh scratch directory and a string unique to this test run.
fn scratch(test: &str) -> (PathBuf, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = format!("{test}-{}-{nanos}", std::process::id());
    let dir = std::env::temp_dir().join(format!("narpush-pathinfo-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    (dir, tag)
}

fn store_path(nix: &LocalNix, full: &str) -> StorePath {
    StorePath::from_full_path(&nix.store_dir, full)
        .unwrap_or_else(|e| panic!("{full} is not a store path: {e}"))
}

/// Compare one queried path with `nix-store --query`'s answers.
fn check_against_nix_store(nix: &LocalNix, info: &narpush::nix::pathinfo::PathInfo) {
    let full = info.path.to_full(&nix.store_dir);
    let hash = sh("nix-store", &["--query", "--hash", &full]);
    assert_eq!(Some(info.nar_hash), parse_hash_any(&hash), "hash of {full}");
    let size = sh("nix-store", &["--query", "--size", &full]);
    assert_eq!(info.nar_size.to_string(), size, "size of {full}");
    let mut refs: Vec<StorePath> = sh("nix-store", &["--query", "--references", &full])
        .lines()
        .map(|l| store_path(nix, l))
        .collect();
    refs.sort();
    assert_eq!(info.references, refs, "references of {full}");
    let deriver = sh("nix-store", &["--query", "--deriver", &full]);
    let want = (deriver != "unknown-deriver").then(|| store_path(nix, &deriver));
    assert_eq!(info.deriver, want, "deriver of {full}");
}

fn build(dir: &Path, expr: &str, out_link: Option<&Path>) -> String {
    let file = dir.join("default.nix");
    std::fs::write(&file, expr).unwrap();
    let mut args = vec![file.to_str().unwrap()];
    let link;
    match out_link {
        Some(l) => {
            link = l.to_str().unwrap().to_string();
            args.extend(["--out-link", &link]);
        }
        None => args.push("--no-out-link"),
    }
    args.extend(BUILD_OPTS);
    sh("nix-build", &args)
}

#[test]
fn query_added_file_matches_nix_store() {
    let nix = local_nix();
    let (dir, tag) = scratch("add");
    let file = dir.join("added.txt");
    std::fs::write(&file, format!("narpush test {tag}\n")).unwrap();
    let full = sh("nix-store", &["--add", file.to_str().unwrap()]);
    let p = store_path(&nix, &full);

    let infos = nix.query(std::slice::from_ref(&p), false).unwrap();
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.path, p);
    check_against_nix_store(&nix, info);
    assert!(info.references.is_empty());
    // A flat file added recursively: its CA hash is its NAR hash.
    let want_ca = format!(
        "fixed:r:sha256:{}",
        narpush::nix::nixbase32::encode(&info.nar_hash)
    );
    assert_eq!(info.ca.as_deref(), Some(want_ca.as_str()));
    assert!(info.sigs.is_empty());
    assert_eq!(nix.valid_paths(std::slice::from_ref(&p)).unwrap(), [p]);
}

#[test]
fn closure_of_a_build_with_a_reference() {
    let nix = local_nix();
    let (dir, tag) = scratch("closure");
    let out = build(
        &dir,
        &format!(
            r#"let dep = builtins.toFile "narpush-dep" "{tag}\n"; in
            derivation {{ name = "narpush-refdemo"; system = builtins.currentSystem;
              builder = "/bin/sh"; args = [ "-c" "echo ${{dep}} > $out" ]; }}"#
        ),
        None,
    );
    let out_p = store_path(&nix, &out);
    let dep = sh("nix-store", &["--query", "--references", &out]);
    let dep_p = store_path(&nix, &dep);

    let only = nix.query(std::slice::from_ref(&out_p), false).unwrap();
    assert_eq!(only.len(), 1);
    assert!(only[0].ultimate, "a local build is ultimately trusted");

    let closure = nix.query(std::slice::from_ref(&out_p), true).unwrap();
    let mut got: Vec<&StorePath> = closure.iter().map(|i| &i.path).collect();
    got.sort();
    let mut want = vec![&out_p, &dep_p];
    want.sort();
    assert_eq!(got, want);
    for info in &closure {
        check_against_nix_store(&nix, info);
    }
    let out_info = closure.iter().find(|i| i.path == out_p).unwrap();
    assert_eq!(out_info.references, std::slice::from_ref(&dep_p));
    assert!(out_info.deriver.as_ref().unwrap().name().ends_with(".drv"));
    let dep_info = closure.iter().find(|i| i.path == dep_p).unwrap();
    assert!(dep_info.ca.as_deref().unwrap().starts_with("text:sha256:"));
}

#[test]
fn invalid_path_is_named() {
    let nix = local_nix();
    let (dir, tag) = scratch("invalid");
    let file = dir.join("valid.txt");
    std::fs::write(&file, format!("narpush valid {tag}\n")).unwrap();
    let valid = store_path(&nix, &sh("nix-store", &["--add", file.to_str().unwrap()]));
    let bogus =
        StorePath::from_base_name("00000000000000000000000000000000-narpush-not-there").unwrap();
    let bogus_full = bogus.to_full(&nix.store_dir);
    for closure in [false, true] {
        let e = nix
            .query(&[valid.clone(), bogus.clone()], closure)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{bogus_full} is not valid in the local Nix store (not built or garbage-collected)"
            ),
            "closure={closure}"
        );
    }
    assert_eq!(nix.valid_paths(&[bogus, valid.clone()]).unwrap(), [valid]);
}

#[test]
fn valid_outputs_of_two_output_derivation() {
    let nix = local_nix();
    let (dir, tag) = scratch("outputs");
    let file = dir.join("default.nix");
    std::fs::write(
        &file,
        format!(
            r#"derivation {{ name = "narpush-two-{}"; system = builtins.currentSystem;
              outputs = [ "out" "doc" ]; builder = "/bin/sh";
              args = [ "-c" "echo out > $out; echo doc > $doc" ]; }}"#,
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ),
    )
    .unwrap();
    let drv = sh("nix-instantiate", &[file.to_str().unwrap()]);
    let drv_path = Path::new(&drv);
    // Not built yet: no output is valid.
    assert!(nix.valid_outputs_of(drv_path).unwrap().is_empty());

    let mut args = vec!["--realise", drv.as_str()];
    args.extend(BUILD_OPTS);
    sh("nix-store", &args);
    let mut got = nix.valid_outputs_of(drv_path).unwrap();
    got.sort();
    let mut want: Vec<StorePath> = sh("nix-store", &["--query", "--outputs", &drv])
        .lines()
        .map(|l| store_path(&nix, l))
        .collect();
    want.sort();
    assert_eq!(want.len(), 2);
    assert_eq!(got, want);
    assert!(got.iter().any(|p| p.name().ends_with("-doc")));

    let missing = format!(
        "{}/00000000000000000000000000000000-narpush-missing.drv",
        nix.store_dir
    );
    let e = nix
        .valid_outputs_of(Path::new(&missing))
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("derivation {missing} does not exist"));

    // Not a derivation; a .drv outside the store (nix-store's own error, last line).
    let e = nix
        .valid_outputs_of(file.as_path())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{} is not a derivation (a .drv file)", file.display())
    );
    let outside = dir.join("fake.drv");
    std::fs::write(&outside, "Derive([])").unwrap();
    let e = nix.valid_outputs_of(&outside).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "`nix-store --query --outputs {}` failed",
            outside.display()
        )),
        "{e}"
    );
    assert!(e.contains("is not in the Nix store"), "{e}");
}

#[test]
fn resolve_user_paths() {
    let nix = local_nix();
    let sd = nix.store_dir.as_str();
    let (dir, tag) = scratch("resolve");

    // A directory in the store, reached through a `result`-like symlink chain.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/tool"), format!("{tag}\n")).unwrap();
    let store_dir_path = sh("nix-store", &["--add", tree.to_str().unwrap()]);
    let want = store_path(&nix, &store_dir_path);
    let result = dir.join("result");
    std::os::unix::fs::symlink(&store_dir_path, &result).unwrap();
    std::os::unix::fs::symlink("result", dir.join("result2")).unwrap();
    let r = |p: &Path| resolve_user_path(p.to_str().unwrap(), sd);

    assert_eq!(resolve_user_path(&store_dir_path, sd).unwrap(), want);
    assert_eq!(
        resolve_user_path(&format!("{store_dir_path}/"), sd).unwrap(),
        want
    );
    assert_eq!(r(&result).unwrap(), want);
    assert_eq!(r(&dir.join("result2")).unwrap(), want);
    assert_eq!(
        resolve_user_path(&format!("{}/", result.display()), sd).unwrap(),
        want
    );
    assert_eq!(r(&dir.join("./result2")).unwrap(), want);

    // A relative argument, resolved from the current directory.
    let rel = pathdiff_to_cwd(&result);
    assert_eq!(resolve_user_path(&rel, sd).unwrap(), want);

    // Inside a store path, directly and through the symlink.
    let sub = format!("{store_dir_path}/bin");
    let e = resolve_user_path(&sub, sd).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("'{sub}' is inside a store path; give the store path itself ({store_dir_path})")
    );
    let via = result.join("bin");
    let e = r(&via).unwrap_err().to_string();
    assert!(e.contains(&format!("'{}'", via.display())), "{e}");
    assert!(
        e.contains(&format!("give the store path itself ({store_dir_path})")),
        "{e}"
    );

    // A store path that is itself a symlink is returned, not followed.
    let link_src = dir.join("a-link");
    std::os::unix::fs::symlink(format!("/narpush-target-{tag}"), &link_src).unwrap();
    let link_store = sh("nix-store", &["--add", link_src.to_str().unwrap()]);
    assert_eq!(
        resolve_user_path(&link_store, sd).unwrap(),
        store_path(&nix, &link_store)
    );

    // A symlink loop.
    std::os::unix::fs::symlink("loop-b", dir.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", dir.join("loop-b")).unwrap();
    let e = r(&dir.join("loop-a")).unwrap_err().to_string();
    assert!(e.contains("too many levels of symbolic links"), "{e}");
    assert!(e.contains("loop-a"), "{e}");

    // Nonexistent, a dangling symlink, and a missing store path.
    let nope = dir.join("nope");
    let e = r(&nope).unwrap_err().to_string();
    assert_eq!(e, format!("'{}' does not exist", nope.display()));
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    let e = r(&dir.join("dangling")).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let gone = format!("{sd}/00000000000000000000000000000000-narpush-gone");
    let e = resolve_user_path(&gone, sd).unwrap_err().to_string();
    assert!(e.starts_with(&format!("'{gone}' does not exist")), "{e}");

    // Not in the store at all.
    let e = r(&tree).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("'{}' is not in the Nix store ({sd})", tree.display())
    );
}

/// `p` relative to the current directory (tests run in the crate root).
fn pathdiff_to_cwd(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap();
    let ups = cwd.components().count() - 1;
    let mut s = "../".repeat(ups);
    s.push_str(p.to_str().unwrap().trim_start_matches('/'));
    s
}

#[test]
fn batches_beyond_one_call() {
    // 2500 paths take three child processes of 1000 each.
    let nix = local_nix();
    let (dir, tag) = scratch("batches");
    let file = dir.join("batched.txt");
    std::fs::write(&file, format!("narpush batched {tag}\n")).unwrap();
    let valid = store_path(&nix, &sh("nix-store", &["--add", file.to_str().unwrap()]));
    let mut many = Vec::new();
    for i in 0..2500 {
        if i % 2 == 0 {
            many.push(valid.clone());
        } else {
            let base = format!("{}-narpush-missing-{i}", "0".repeat(32));
            many.push(StorePath::from_base_name(&base).unwrap());
        }
    }
    let got = nix.valid_paths(&many).unwrap();
    assert_eq!(got.len(), 1250);
    assert!(got.iter().all(|p| *p == valid));

    let same = vec![valid.clone(); 2500];
    let infos = nix.query(&same, false).unwrap();
    assert_eq!(infos.len(), 1, "results are de-duplicated across batches");
    assert_eq!(infos[0].path, valid);
}
