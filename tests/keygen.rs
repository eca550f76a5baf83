//! `narpush keygen` makes keys real Nix accepts: `nix key convert-secret-to-public`
//! derives the same public key, and `nix store verify` accepts what narpush signed.
mod common;

use common::nix::{build, graph_expr, narpush, nix, nonce, ok, run, stderr};
use common::s3server::temp_dir;
use std::os::unix::fs::PermissionsExt;

#[test]
fn keygen_pair_is_accepted_by_nix() {
    let dir = temp_dir("keygen");
    let prefix = dir.join("my-cache-1");
    let out = ok(narpush()
        .args(["keygen", "my-cache-1", "--out"])
        .arg(&prefix));
    let sec = dir.join("my-cache-1.sec");
    let public = std::fs::read_to_string(dir.join("my-cache-1.pub")).unwrap();
    assert_eq!(out.trim(), public.trim(), "keygen prints the public key");
    assert_eq!(
        std::fs::metadata(&sec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let derived = ok(nix()
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(&sec).unwrap()));
    assert_eq!(derived.trim(), public.trim());

    // Sign by pushing to a file:// cache, then let Nix verify the signatures there.
    // An input-addressed path: content-addressed ones are trusted without signatures.
    let p = build(&dir, &graph_expr(&nonce("keygen")), "dep", &[], &[]).remove(0);
    let cache = format!("file://{}", dir.join("cache").display());
    ok(narpush()
        .args(["push", "--to", &cache, "--key-file"])
        .arg(&sec)
        .arg(&p));
    let verify = |key: &str| {
        run(nix().args([
            "store",
            "verify",
            "--store",
            &cache,
            "--sigs-needed",
            "1",
            "--trusted-public-keys",
            key,
            &p,
        ]))
    };
    let good = verify(public.trim());
    assert!(
        good.status.success(),
        "nix store verify refused narpush's signature: {}",
        stderr(&good)
    );
    let other = ok(narpush()
        .args(["keygen", "other-1", "--out"])
        .arg(dir.join("other")));
    let bad = verify(other.trim());
    assert!(
        !bad.status.success(),
        "nix store verify accepted a signature under the wrong key"
    );

    // An existing key is never overwritten.
    let again = run(narpush()
        .args(["keygen", "my-cache-1", "--out"])
        .arg(&prefix));
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}
