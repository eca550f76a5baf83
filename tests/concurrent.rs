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

#[test]
fn concurrent_multipart_pushes_of_the_same_big_path() {
    let dir = temp_dir("concurrent-big");
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let (sec, public) = nix_keypair(&dir, "narpush-conc-1");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let data: Vec<u8> = (0..(11 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let path = common::nix::add_file(&nonce("conc-big"), &data);
    let to = format!("{}&multipart-chunk-size=5242880", s3.url("big"));
    let children: Vec<_> = (0..4)
        .map(|i| {
            narpush()
                .args(["push", "--to", &to, "--key-file"])
                .arg(&sec)
                .args(["--compression", if i % 2 == 0 { "none" } else { "zstd" }])
                .arg(&path)
                .env("AWS_ACCESS_KEY_ID", &s3.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    }
    let bucket = s3.bucket_dir("big");
    assert_eq!(cached_paths(&bucket), [path.clone()].into());
    assert_eq!(check_invariants(&bucket), 1);
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    let http = HttpServer::serve(&bucket);
    let root = common::nix::fresh_root("concurrent-big-client");
    let out = realise_from(&http.url(), &root, &[&path], &public);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(in_root(&root, &path)).unwrap() == data);
}

#[test]
fn concurrent_hooks_with_the_server_down_all_reach_the_pending_list() {
    let dir = temp_dir("concurrent-pending");
    let mut s3 = S3Server::start();
    s3.create_bucket("cache");
    let state = dir.join("state");
    let config = dir.join("narpush.toml");
    std::fs::write(
        &config,
        format!(
            "to = \"{}\"\nstate-dir = \"{}\"\n",
            s3.url("cache"),
            state.display()
        ),
    )
    .unwrap();
    s3.stop();
    let paths: Vec<String> = (0..8)
        .map(|i| common::nix::add_file(&nonce(&format!("pending{i}")), format!("{i}\n").as_bytes()))
        .collect();
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            narpush()
                .env("NARPUSH_CONFIG", &config)
                .env("OUT_PATHS", p)
                .env("AWS_ACCESS_KEY_ID", &s3.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let list: std::collections::BTreeSet<String> = std::fs::read_to_string(state.join("pending"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(list, paths.iter().cloned().collect());
}
