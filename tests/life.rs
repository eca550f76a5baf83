//! The cache's life, against a real S3 server (s3s-fs) with real Nix as the client:
//! `narpush init` sets an empty bucket up and Nix reads it; `verify` passes on what
//! narpush wrote and names each kind of damage; `gc` deletes exactly the paths
//! pushed long ago (by the server's clock: object mtimes set back) that nothing
//! fresh or kept needs, with their NARs and logs, and leaves a consistent cache even
//! when killed halfway; `nix log` on a fresh store reads a log narpush uploaded.

mod common;

use common::cache::{cached_paths, check_invariants, in_root, narinfos, snapshot};
use common::life::{age_all, deriver, narinfo_key, Life, DAY};
use common::nix::{
    add_file, build, graph_expr, nix, nix_keypair, nonce, realise_from, stderr, stdout, HttpServer,
    NIX_OPTS,
};
use common::proxy::{Action, Proxy};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|s| s.to_string()).collect()
}

/// Substitute `paths` from the bucket over HTTP into a fresh store; panics on failure.
fn substitute(dir: &Path, paths: &[&str], public_key: &str) {
    let http = HttpServer::serve(dir);
    let root = common::nix::fresh_root("life-client");
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
            "{p} not substituted"
        );
    }
}

#[test]
fn init_sets_an_empty_bucket_up_and_nix_reads_it() {
    let l = Life::new("init");
    let url = l.url();
    let sec = l.sec.to_str().unwrap();
    let out = l.ok(&[
        "init",
        "--to",
        &url,
        "--create-bucket",
        "--public-read",
        "--key-file",
        sec,
    ]);
    let info = l.bucket_dir().join("nix-cache-info");
    assert_eq!(
        std::fs::read_to_string(&info).unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
    // s3s-fs has neither bucket policies nor lifecycle rules: one line each says so.
    let unsupported: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("not supported by this server"))
        .collect();
    assert_eq!(unsupported.len(), 2, "{out}");
    assert!(
        unsupported[0].starts_with("public read:") && unsupported[0].contains("Garage"),
        "{out}"
    );
    assert!(
        unsupported[1].starts_with("lifecycle:") && unsupported[1].contains("narpush gc"),
        "{out}"
    );
    let sub = format!("{}/{}", l.s3.endpoint(), l.bucket);
    assert!(
        out.contains(&format!("extra-substituters = {sub}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("extra-trusted-public-keys = {}\n", l.public)),
        "{out}"
    );
    assert!(
        out.contains(&format!("nix.settings.extra-substituters = [ \"{sub}\" ];")),
        "{out}"
    );

    // Real Nix reads the cache init made (and a path pushed to it).
    let p = add_file("life-init", nonce("init").as_bytes());
    l.push(&[&p]);
    substitute(&l.bucket_dir(), &[&p], &l.public);

    // Twice: nothing changes.
    let before = snapshot(&l.bucket_dir());
    let out = l.ok(&["init", "--to", &url, "--create-bucket", "--key-file", sec]);
    assert!(
        out.contains("already there for this store, left alone"),
        "{out}"
    );
    assert_eq!(snapshot(&l.bucket_dir()), before);
}

#[test]
fn init_refuses_a_cache_for_another_store_dir_unless_forced() {
    let l = Life::with_bucket("init-storedir");
    let url = l.url();
    let info = l.bucket_dir().join("nix-cache-info");
    std::fs::write(&info, "StoreDir: /opt/store\n").unwrap();
    let out = l.run(&["init", "--to", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("'/opt/store'") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&info).unwrap(),
        "StoreDir: /opt/store\n"
    );
    l.ok(&["init", "--to", &url, "--force", "--priority", "30"]);
    assert_eq!(
        std::fs::read_to_string(&info).unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );
}

#[test]
fn init_prints_the_minimal_policy_as_json_naming_the_bucket() {
    let l = Life::with_bucket("init-policy");
    // No credentials needed: the user it is for does not exist yet.
    let out = l.ok(&["init", "--to", &l.url(), "--print-policy"]);
    let mut bare = common::nix::narpush();
    bare.env("HOME", &l.dir)
        .args(["init", "--to", &l.url(), "--print-policy"]);
    assert_eq!(common::nix::ok(&mut bare), out);
    let v: serde_json::Value = serde_json::from_str(&out).expect("--print-policy prints JSON");
    let mut actions = BTreeSet::new();
    let mut resources = BTreeSet::new();
    for st in v["Statement"].as_array().expect("Statement array") {
        assert_eq!(st["Effect"], "Allow");
        for a in st["Action"].as_array().unwrap() {
            actions.insert(a.as_str().unwrap().to_string());
        }
        for r in st["Resource"].as_array().unwrap() {
            resources.insert(r.as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        resources,
        set(&["arn:aws:s3:::cache", "arn:aws:s3:::cache/*"])
    );
    assert_eq!(
        actions,
        set(&[
            "s3:AbortMultipartUpload",
            "s3:DeleteObject",
            "s3:GetObject",
            "s3:ListBucket",
            "s3:ListBucketMultipartUploads",
            "s3:PutObject",
        ])
    );
    // Nothing was written to the bucket.
    assert!(snapshot(&l.bucket_dir()).is_empty());
}

/// Change one character of the signature payload of a narinfo (keeping its key name).
fn break_signature(narinfo: &Path) {
    let text = std::fs::read_to_string(narinfo).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if let Some(sig) = line.strip_prefix("Sig: ") {
            let (name, payload) = sig.split_once(':').unwrap();
            let mut p: Vec<char> = payload.chars().collect();
            p[10] = if p[10] == 'A' { 'B' } else { 'A' };
            out.push_str(&format!(
                "Sig: {name}:{}\n",
                p.into_iter().collect::<String>()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_ne!(out, text);
    std::fs::write(narinfo, out).unwrap();
}

#[test]
fn verify_passes_on_what_narpush_wrote_and_names_each_problem() {
    let l = Life::with_bucket("verify");
    let dir = l.dir.clone();
    let n = nonce("verify");
    let files: Vec<String> = (0..4)
        .map(|i| {
            add_file(
                &format!("life-verify-{i}"),
                format!("{n} {i}\n").repeat(50).as_bytes(),
            )
        })
        .collect();
    let expr = graph_expr(&nonce("verify-graph"));
    let top = build(&dir, &expr, "top", &[], &[]).remove(0);
    let app = build(&dir, &expr, "app", &[], &[]).remove(0);
    let dep = build(&dir, &expr, "dep", &[], &[]).remove(0);
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.push(&top);
    l.push(&args);

    let out = l.verify(&["--all"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).starts_with("verify: 8 checked, 8 good, 0 with problems"),
        "{}",
        stdout(&out)
    );
    let out = l.verify(&[&files[3], &top]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    // A path signed only by a key verify does not trust.
    let (other, _) = nix_keypair(&dir, "someone-else-1");
    let untrusted = add_file("life-verify-untrusted", nonce("untrusted").as_bytes());
    l.ok(&[
        "push",
        "--to",
        &l.url(),
        "--key-file",
        other.to_str().unwrap(),
        &untrusted,
    ]);

    let bucket = l.bucket_dir();
    let infos = narinfos(&bucket);
    // A flipped byte in a NAR.
    let nar0 = bucket.join(&infos[&files[0]].url);
    let mut bytes = std::fs::read(&nar0).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&nar0, bytes).unwrap();
    // A deleted NAR.
    std::fs::remove_file(bucket.join(&infos[&files[1]].url)).unwrap();
    // A bad signature by the trusted key.
    break_signature(&bucket.join(narinfo_key(&files[2])));
    // A missing reference: app's dependency is gone.
    std::fs::remove_file(bucket.join(narinfo_key(&dep))).unwrap();

    let out = l.verify(&["--all", "--jobs", "3"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.starts_with("verify: 8 checked, 3 good, 5 with problems"),
        "{text}"
    );
    let section = |label: &str| -> Vec<String> {
        let mut lines = text.lines().skip_while(|l| !l.starts_with(label));
        let head = lines
            .next()
            .unwrap_or_else(|| panic!("no '{label}' section in:\n{text}"));
        assert!(head.ends_with("(1):"), "{head}");
        vec![lines.next().unwrap().trim().to_string()]
    };
    let names = |label: &str, path: &str| {
        let s = section(label);
        assert!(s[0].starts_with(path), "{label}: {s:?} should name {path}");
    };
    names("NAR file differs from FileSize/FileHash", &files[0]);
    names("NAR missing", &files[1]);
    names("bad signature by a trusted key", &files[2]);
    names("no signature by a trusted key", &untrusted);
    names("reference neither in the cache nor upstream", &app);
    let s = section("reference neither in the cache nor upstream");
    assert!(s[0].contains(dep.rsplit('/').next().unwrap()), "{s:?}");
    assert!(!text.contains(&files[3]), "{text}");
}

/// Derivations for gc: `old` and `fresh` share `shared`; `oldonly` only `old` needs;
/// `kept` (kept by --keep) needs `keptdep`. Each build prints a line to its log.
fn gc_expr(tag: &str) -> String {
    format!(
        r#"let
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; tag = "{tag}"; PATH = "/usr/bin:/bin"; }};
  shared = mk "life-shared" "echo building shared {tag}; echo shared > $out";
  oldonly = mk "life-oldonly" "echo building oldonly {tag}; echo oldonly > $out";
  old = mk "life-old" "echo building old {tag}; mkdir $out; echo ${{shared}} ${{oldonly}} > $out/refs";
  fresh = mk "life-fresh" "echo building fresh {tag}; mkdir $out; echo ${{shared}} > $out/refs";
  keptdep = mk "life-keptdep" "echo building keptdep {tag}; echo keptdep > $out";
  kept = mk "life-kept" "echo building kept {tag}; mkdir $out; echo ${{keptdep}} > $out/refs";
in {{ inherit shared oldonly old fresh keptdep kept; }}
"#
    )
}

fn logs_in(bucket: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(bucket.join("log")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn drv_name(path: &str) -> String {
    deriver(path).rsplit('/').next().unwrap().to_string()
}

#[test]
fn gc_deletes_exactly_the_old_only_paths_with_their_nars_and_logs() {
    let l = Life::with_bucket("gc");
    let dir = l.dir.clone();
    let expr = gc_expr(&nonce("gc"));
    let b = |attr: &str| build(&dir, &expr, attr, &[], &[]).remove(0);
    let (shared, oldonly, old, fresh, keptdep, kept) = (
        b("shared"),
        b("oldonly"),
        b("old"),
        b("fresh"),
        b("keptdep"),
        b("kept"),
    );
    l.push(&["--upload-log", &old, &kept, &fresh]);
    let bucket = l.bucket_dir();
    let all = set(&[&shared, &oldonly, &old, &fresh, &keptdep, &kept]);
    assert_eq!(cached_paths(&bucket), all);
    let all_logs: BTreeSet<String> = all.iter().map(|p| drv_name(p)).collect();
    assert_eq!(logs_in(&bucket), all_logs);

    // Ten days pass on the server; then `fresh` is pushed again, which renews its
    // narinfo and that of `shared` (both older than a day).
    age_all(&bucket, 10 * DAY);
    let t0 = std::time::SystemTime::now() - Duration::from_secs(3600);
    l.push(&[&fresh]);
    let mtime = |p: &str| {
        std::fs::metadata(bucket.join(narinfo_key(p)))
            .unwrap()
            .modified()
            .unwrap()
    };
    assert!(
        mtime(&fresh) > t0,
        "pushing {fresh} again did not renew its narinfo"
    );
    assert!(
        mtime(&shared) > t0,
        "pushing {fresh} again did not renew {shared}"
    );
    assert!(mtime(&old) < t0);

    let result = dir.join("result");
    std::os::unix::fs::symlink(&kept, &result).unwrap();
    let url = l.url();
    let keep = result.to_str().unwrap();
    let gc_args = ["gc", "--to", &url, "--older-than", "7d", "--keep", keep];

    // --dry-run says what would go and deletes nothing.
    let before = snapshot(&bucket);
    let mut dry = gc_args.to_vec();
    dry.push("--dry-run");
    let out = l.ok(&dry);
    assert_eq!(
        snapshot(&bucket),
        before,
        "--dry-run changed the bucket:\n{out}"
    );
    for p in [&old, &oldonly] {
        assert!(
            out.contains(&format!("would delete {p} (")),
            "{p} not in:\n{out}"
        );
    }
    for p in [&shared, &fresh, &kept, &keptdep] {
        assert!(!out.contains(p.as_str()), "{p} should stay:\n{out}");
    }
    assert!(out.contains("would free"), "{out}");

    let out = l.ok(&gc_args);
    let left = set(&[&shared, &fresh, &keptdep, &kept]);
    assert_eq!(cached_paths(&bucket), left, "{out}");
    assert_eq!(check_invariants(&bucket), 4);
    // Exactly the NARs the remaining narinfos name.
    let named: BTreeSet<String> = narinfos(&bucket).values().map(|i| i.url.clone()).collect();
    let nars: BTreeSet<String> = snapshot(&bucket.join("nar"))
        .into_keys()
        .map(|k| format!("nar/{k}"))
        .collect();
    assert_eq!(nars, named, "{out}");
    let want_logs: BTreeSet<String> = left.iter().map(|p| drv_name(p)).collect();
    assert_eq!(logs_in(&bucket), want_logs, "{out}");
    assert!(out.contains("2 narinfos, 2 NARs, 2 logs"), "{out}");

    let v = l.verify(&["--all"]);
    assert!(
        v.status.success(),
        "verify after gc:\n{}{}",
        stdout(&v),
        stderr(&v)
    );
    substitute(&bucket, &[&fresh, &kept], &l.public);
}

#[test]
fn gc_killed_halfway_leaves_a_consistent_cache() {
    let l = Life::with_bucket("gc-kill");
    let dir = l.dir.clone();
    let tag = nonce("chain");
    let expr = format!(
        r#"let
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; tag = "{tag}"; PATH = "/usr/bin:/bin"; }};
  c4 = mk "life-c4" "echo c4 > $out";
  c3 = mk "life-c3" "echo ${{c4}} > $out";
  c2 = mk "life-c2" "echo ${{c3}} > $out";
  c1 = mk "life-c1" "echo ${{c2}} > $out";
in {{ inherit c1 c2 c3 c4; }}
"#
    );
    let c: Vec<String> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|a| build(&dir, &expr, a, &[], &[]).remove(0))
        .collect();
    l.push(&[&c[0]]);
    let bucket = l.bucket_dir();
    assert_eq!(cached_paths(&bucket).len(), 4);
    age_all(&bucket, 10 * DAY);

    // The second DeleteObjects request never gets an answer; gc is killed then.
    let deletes = AtomicUsize::new(0);
    let proxy = Proxy::start(l.s3.port, move |r| {
        if r.method == "POST"
            && r.target.contains("delete")
            && deletes.fetch_add(1, Ordering::SeqCst) == 1
        {
            Action::Stall
        } else {
            Action::Forward
        }
    });
    let mut child = l
        .narpush()
        .args(["gc", "--to", &proxy.url(l.bucket, ""), "--older-than", "7d"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stalled = proxy.wait_for(Duration::from_secs(60), |s| s.stalled >= 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(stalled, "gc never reached its second DeleteObjects");
    // The dependent went first; its dependencies are all still there, with NARs.
    assert_eq!(cached_paths(&bucket), set(&[&c[1], &c[2], &c[3]]));
    assert_eq!(check_invariants(&bucket), 3);
    let v = l.verify(&["--all"]);
    assert!(
        v.status.success(),
        "verify after a killed gc:\n{}{}",
        stdout(&v),
        stderr(&v)
    );

    // Run again to the end: everything old goes.
    let out = l.ok(&["gc", "--to", &l.url(), "--older-than", "7d"]);
    assert!(cached_paths(&bucket).is_empty(), "{out}");
    assert!(snapshot(&bucket.join("nar")).is_empty(), "{out}");
}

#[test]
fn gc_refuses_less_than_a_day_in_one_line() {
    let l = Life::with_bucket("gc-short");
    let out = l.run(&["gc", "--to", &l.url(), "--older-than", "6h"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--older-than 6h is shorter than the minimum of 1d"),
        "{err}"
    );
}

#[test]
fn nix_log_reads_a_log_narpush_uploaded() {
    let l = Life::with_bucket("log");
    let dir = l.dir.clone();
    let tag = nonce("log");
    let expr = format!(
        "derivation {{ name = \"life-logged\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo the build said {tag}; echo done > $out\" ]; PATH = \"/usr/bin:/bin\"; }}"
    );
    std::fs::write(dir.join("default.nix"), &expr).unwrap();
    let out = common::nix::ok(
        std::process::Command::new("nix-build")
            .arg(dir.join("default.nix"))
            .arg("--no-out-link")
            .args(NIX_OPTS),
    );
    let path = out.trim().to_string();
    let log = l.push(&["--upload-log", &path]);
    let drv = deriver(&path);
    assert!(
        log.contains(&format!("uploaded build log of {drv}")),
        "{log}"
    );

    let http = HttpServer::serve(&l.bucket_dir());
    let root = common::nix::fresh_root("log-client");
    let out = common::nix::run(
        nix()
            .arg("log")
            .arg("--store")
            .arg(&root)
            .args(["--option", "substituters", &http.url()])
            .args(["--option", "trusted-public-keys", &l.public])
            .arg(&path),
    );
    assert!(
        out.status.success() && stdout(&out).contains(&format!("the build said {tag}")),
        "nix log failed or lacks the build's output:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn the_hook_uploads_the_log_of_drv_path_when_the_config_says_so() {
    hook_uploads_the_log("log-hook", true);
}

#[test]
fn the_pusher_uploads_the_log_of_what_a_hook_queued() {
    hook_uploads_the_log("log-queue", false);
}

/// nix-build with narpush as the hook and `upload-log = true`: with `wait`, the hook
/// uploads DRV_PATH's log itself; queueing, the pusher uploads it (`flush` waits).
fn hook_uploads_the_log(name: &str, wait: bool) {
    let l = Life::with_bucket(name);
    let dir = l.dir.clone();
    let config = dir.join("narpush.toml");
    std::fs::write(
        &config,
        format!(
            "to = \"{}\"\nkey-file = \"{}\"\nupload-log = true\n",
            l.url(),
            l.sec.display()
        ),
    )
    .unwrap();
    let tag = nonce("log-hook");
    std::fs::write(
        dir.join("default.nix"),
        format!(
            "derivation {{ name = \"life-hooked\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
             args = [ \"-c\" \"echo the hooked build said {tag}; echo done > $out\" ]; PATH = \"/usr/bin:/bin\"; }}"
        ),
    )
    .unwrap();
    let c = l.narpush();
    let hook = c.get_program().to_owned();
    let out = common::nix::run(
        std::process::Command::new("nix-build")
            .arg(dir.join("default.nix"))
            .arg("--no-out-link")
            .args(NIX_OPTS)
            .arg("--option")
            .arg("post-build-hook")
            .arg(&hook)
            .envs(
                c.get_envs()
                    .filter(|(k, _)| wait || k.to_str() != Some("NARPUSH_WAIT"))
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
            )
            .env("NARPUSH_CONFIG", &config),
    );
    assert!(out.status.success(), "nix-build failed:\n{}", stderr(&out));
    let path = stdout(&out).trim().to_string();
    if !wait {
        assert!(stderr(&out).contains("narpush: queued"), "{}", stderr(&out));
        let mut flush = l.narpush();
        flush
            .env_remove("NARPUSH_WAIT")
            .env("NARPUSH_CONFIG", &config)
            .args(["flush", "--timeout", "120s"]);
        let f = common::nix::run(&mut flush);
        assert!(f.status.success(), "flush: {}{}", stdout(&f), stderr(&f));
    }
    let drv = deriver(&path);
    let key = format!("log/{}", drv.rsplit('/').next().unwrap());
    let log = std::fs::read_to_string(l.bucket_dir().join(&key)).unwrap_or_else(|e| {
        panic!(
            "{key} not in the bucket ({e}); nix-build said:\n{}",
            stderr(&out)
        )
    });
    assert!(
        log.contains(&format!("the hooked build said {tag}")),
        "{log}"
    );
    assert_eq!(cached_paths(&l.bucket_dir()), set(&[&path]));
}

#[test]
fn init_verify_and_gc_work_on_a_file_cache_too() {
    let l = Life::new("file-cache");
    let cache = l.dir.join("cache");
    let url = format!("file://{}", cache.display());
    let sec = l.sec.to_str().unwrap();
    let out = l.ok(&["init", "--to", &url, "--key-file", sec]);
    assert!(
        out.contains(&format!("extra-substituters = {url}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
    let expr = gc_expr(&nonce("file-gc"));
    let b = |attr: &str| build(&l.dir, &expr, attr, &[], &[]).remove(0);
    let (shared, oldonly, old, fresh) = (b("shared"), b("oldonly"), b("old"), b("fresh"));
    l.ok(&["push", "--to", &url, "--key-file", sec, &old, &fresh]);
    let verify = |args: &[&str]| {
        let mut all = vec![
            "verify",
            "--to",
            url.as_str(),
            "--trusted-key",
            l.public.as_str(),
        ];
        all.extend_from_slice(args);
        l.run(&all)
    };
    let v = verify(&["--all"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(
        stdout(&v).starts_with("verify: 4 checked, 4 good"),
        "{}",
        stdout(&v)
    );
    age_all(&cache, 10 * DAY);
    l.ok(&["push", "--to", &url, "--key-file", sec, &fresh]);
    let out = l.ok(&["gc", "--to", &url, "--older-than", "7d"]);
    assert_eq!(cached_paths(&cache), set(&[&shared, &fresh]), "{out}");
    assert!(!cached_paths(&cache).contains(&oldonly));
    assert_eq!(check_invariants(&cache), 2);
    let v = verify(&["--all"]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
}
