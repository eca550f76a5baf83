//! Eight `narpush push` processes at once, with overlapping closures, into one
//! bucket of a real S3 server: all succeed, every narinfo agrees with the object it
//! names, every path of every closure is there, and real Nix substitutes it all.

mod common;

use common::cache::{cached_paths, check_invariants, closure, in_root};
use common::nix::HttpServer;
use common::nix::{build, graph_expr, narpush, nix_keypair, nonce, realise_from, stderr, stdout};
use common::s3server::{temp_dir, S3Server};

#[test]
fn eight_concurrent_pushes_of_overlapping_closures() {
    let dir = temp_dir("concurrent");
    let s3 = S3Server::start();
    s3.create_bucket("cache");
    let (sec, public) = nix_keypair(&dir, "narpush-conc-1");
    // Three graphs: (top, app out, app doc) of each.
    let mut tops = Vec::new();
    let mut apps = Vec::new();
    for i in 0..3 {
        let d = dir.join(format!("g{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let expr = graph_expr(&nonce(&format!("conc{i}")));
        tops.push(build(&d, &expr, "top", &[], &[]).remove(0));
        let mut app = build(&d, &expr, "app", &[], &[]);
        app.extend(build(&d, &expr, "app.doc", &[], &[]));
        apps.push(app);
    }
    // Process i pushes top i%3 and the outputs of app (i+1)%3; odd ones also top
    // (i+2)%3, and two use xz, so the same paths race with different settings.
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut paths = vec![tops[i % 3].clone()];
            paths.extend(apps[(i + 1) % 3].iter().cloned());
            if i % 2 == 1 {
                paths.push(tops[(i + 2) % 3].clone());
            }
            let mut c = narpush();
            c.args([
                "push",
                "--to",
                &s3.url("cache"),
                "--jobs",
                "3",
                "--key-file",
            ])
            .arg(&sec)
            .args(&paths)
            .env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
            if i >= 6 {
                c.args(["--compression", "xz"]);
            }
            (
                paths,
                c.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (paths, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "narpush push {paths:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }
    let bucket = s3.bucket_dir("cache");
    let roots: Vec<&str> = tops.iter().map(String::as_str).collect();
    let all = closure(&roots);
    assert_eq!(all.len(), 12);
    assert_eq!(cached_paths(&bucket), all);
    assert_eq!(check_invariants(&bucket), 12);
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );

    let http = HttpServer::serve(&bucket);
    let root = common::nix::fresh_root("concurrent-client");
    let everything: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = realise_from(&http.url(), &root, &everything, &public);
    assert!(
        out.status.success(),
        "substitute all from the bucket:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    for p in &all {
        assert!(in_root(&root, p).symlink_metadata().is_ok(), "{p}");
    }
}
