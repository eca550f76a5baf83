//! The NixOS module (`nix/module.nix`, `nix/client.nix`) under the real module
//! system: `lib.evalModules` from nixpkgs' lib (`../shared/nixpkgs-lib` beside the
//! repository, or `NARPUSH_NIXPKGS_LIB`) with the stub NixOS options of
//! `nix/tests/stubs.nix`, evaluated by real Nix through `nix/tests/eval.nix`. The
//! configurations are the README's own example, read from README.md.
//!
//! For the builder's configuration, the `/etc/narpush.toml` the module writes is put
//! at `/etc/narpush.toml` (in a mount namespace of the test's own, with the key and
//! credentials at the paths the configuration names and `s3.homelab.local` resolving
//! to a TLS front of the test's S3 server), and the real narpush, given nothing but a
//! store path, pushes it there: so the file is read without error and names the same
//! cache, key and credentials (the S3 server checks the credentials' signature, the
//! narinfo carries the key's signature, and Nix substitutes it trusting only that key).
//!
//! Without nixpkgs' lib (a clone outside CI), each test says loudly that it did not
//! run and why; with `CI=true` that is a failure.

mod common;

use common::cache::{check_invariants, narinfos};
use common::nix::{
    add_file, narpush, nix_keypair, nonce, realise_from, stderr, stdout, HttpServer,
};
use common::s3server::{temp_dir, S3Server};
use common::tlsutil::{make_ca_and_cert_for, start_stunnel_on};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// nixpkgs' `lib` directory, or `None` (after saying so) when it is not there.
fn nixpkgs_lib(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NARPUSH_NIXPKGS_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nixpkgs-lib"));
    let lib = dir.join("lib");
    if lib.join("default.nix").is_file() {
        return Some(lib);
    }
    let why = format!(
        "{test}: NOT RUN: nixpkgs' lib is not at {} (a clone of the repository without \
         ../shared/nixpkgs-lib beside it); set NARPUSH_NIXPKGS_LIB to a nixpkgs-lib \
         checkout (its lib/ inside) to run the NixOS module tests",
        dir.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why} (CI=true: failing)"
    );
    // Straight to stderr, past the test harness's capture, so it shows on success too.
    let _ = writeln!(std::io::stderr(), "\n*** {why} ***\n");
    None
}

/// `nix eval --raw` of `attr` of nix/tests/eval.nix for `configuration` (a module).
fn eval(lib: &Path, configuration: &str, attr: &str) -> Result<String, String> {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "eval",
            "--raw",
        ])
        .arg("--file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/tests/eval.nix"))
        .arg("--argstr")
        .arg("nixpkgsLib")
        .arg(lib)
        .args(["--arg", "configuration", configuration, attr])
        .output()
        .expect("run nix eval (is Nix installed? run `make deps`)");
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(stderr(&out))
    }
}

fn eval_ok(lib: &Path, configuration: &str, attr: &str) -> String {
    eval(lib, configuration, attr)
        .unwrap_or_else(|e| panic!("evaluating {attr} of {configuration} failed:\n{e}"))
}

/// The README's example (the nix block under "NixOS and the Raspberry Pi"): the
/// builder's `services.narpush = { … };` and the reader's `services.narpush.substituter`.
fn readme_example() -> (String, String) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let block = |start: &str| -> String {
        let mut lines = readme.lines().skip_while(|l| *l != start);
        let mut out: Vec<&str> = Vec::new();
        for l in lines.by_ref() {
            out.push(l);
            if l == "};" {
                break;
            }
        }
        assert!(
            out.len() > 2 && out.last() == Some(&"};"),
            "README.md no longer has a `{start}` … `}};` block for this test to evaluate"
        );
        format!("{{\n{}\n}}", out.join("\n"))
    };
    (
        block("services.narpush = {"),
        block("services.narpush.substituter = {"),
    )
}

#[test]
fn readme_builder_configuration_evaluates_with_no_failed_assertion() {
    let Some(lib) = nixpkgs_lib("readme_builder_configuration_evaluates_with_no_failed_assertion")
    else {
        return;
    };
    let (builder, _) = readme_example();
    assert_eq!(eval_ok(&lib, &builder, "failedAssertions"), "");
    let report = eval_ok(&lib, &builder, "report");
    let exe = "/nix/store/00000000000000000000000000000000-narpush-0.1.0/bin/narpush";
    assert_has_all(
        &report,
        &[
            &format!("\"post-build-hook\":\"{exe}\""),
            &format!("\"ExecStart\":\"{exe} retry\""),
            "\"d /var/lib/narpush 0700 root root -\"",
            "\"narpush-retry\":{",
            "\"OnUnitActiveSec\":\"15min\"",
            // The hook only queues; a path unit on the wake file starts the pusher.
            "\"narpush-pusher\":{",
            &format!("\"ExecStart\":\"{exe} pusher\""),
            "\"Nice\":10",
            "\"IOSchedulingClass\":\"idle\"",
            "\"StandardOutput\":\"journal\"",
            "\"PathExists\":\"/var/lib/narpush/pusher.wake\"",
            "\"Unit\":\"narpush-pusher.service\"",
            "\"paths.target\"",
        ],
    );
    let toml = eval_ok(&lib, &builder, "narpushToml");
    assert!(toml.contains("spawn-pusher = false\n"), "{toml}");
    // Priority options are typed: a nice value out of range fails the evaluation.
    let bad = builder.replacen("enable = true;", "enable = true; pusher.nice = 25;", 1);
    assert!(
        bad != builder,
        "the README example lost its `enable = true;`"
    );
    let e = eval(&lib, &bad, "report").expect_err("nice = 25 must not evaluate");
    assert!(e.contains("pusher.nice"), "{e}");
}

/// The eval report (JSON text) contains each of `wants` verbatim.
fn assert_has_all(report: &str, wants: &[&str]) {
    for want in wants {
        assert!(report.contains(want), "no {want} in {report}");
    }
}

#[test]
fn readme_client_configuration_adds_the_substituter_and_its_key() {
    let Some(lib) = nixpkgs_lib("readme_client_configuration_adds_the_substituter_and_its_key")
    else {
        return;
    };
    let (_, client) = readme_example();
    assert_eq!(eval_ok(&lib, &client, "failedAssertions"), "");
    assert_eq!(
        eval_ok(&lib, &client, "narpushToml"),
        "",
        "a reader has no narpush.toml"
    );
    let report = eval_ok(&lib, &client, "report");
    assert_has_all(
        &report,
        &[
            "\"extra-substituters\":[\"https://s3.homelab.local/nix-cache\"]",
            "\"extra-trusted-public-keys\":[\"nixbuilder-1:…\"]",
            "\"services\":{}",
        ],
    );
    // A URL without a key: Nix would refuse every path, so the module refuses.
    let failed = eval_ok(
        &lib,
        "{ services.narpush.substituter.url = \"https://s3.homelab.local/nix-cache\"; }",
        "failedAssertions",
    );
    assert!(
        failed.contains("substituter.publicKey must be set"),
        "{failed}"
    );
}

#[test]
fn assertions_fire_for_a_secret_in_the_store_and_for_a_relative_path() {
    let Some(lib) =
        nixpkgs_lib("assertions_fire_for_a_secret_in_the_store_and_for_a_relative_path")
    else {
        return;
    };
    let config = |key: &str, creds: &str| {
        format!(
            "{{ services.narpush = {{ enable = true; cache = \"s3://nix-cache\"; \
             secretKeyFile = \"{key}\"; credentialsFile = \"{creds}\"; }}; }}"
        )
    };
    let store_key = "/nix/store/0a0hf2qjhfpfg6iq5x0b0jnbyqxl7f6h-cache-key.sec";
    let failed = eval_ok(
        &lib,
        &config(store_key, "etc/narpush/credentials"),
        "failedAssertions",
    );
    let lines: Vec<&str> = failed.lines().collect();
    assert_eq!(
        lines,
        [
            format!("services.narpush.secretKeyFile = {store_key} is in the Nix store, which every user can read; name a file outside it (e.g. under /etc or /run/secrets)."),
            "services.narpush.credentialsFile must be an absolute path, not etc/narpush/credentials.".to_string(),
        ],
        "{failed}"
    );
    // The other way round: the credentials in the store, the key relative.
    let failed = eval_ok(
        &lib,
        &config(
            "cache-key.sec",
            "/nix/store/0a0hf2qjhfpfg6iq5x0b0jnbyqxl7f6h-creds",
        ),
        "failedAssertions",
    );
    assert!(
        failed.contains("secretKeyFile must be an absolute path, not cache-key.sec"),
        "{failed}"
    );
    assert!(failed.contains("services.narpush.credentialsFile = /nix/store/0a0hf2qjhfpfg6iq5x0b0jnbyqxl7f6h-creds is in the Nix store"), "{failed}");
    // And a misspelt option is an evaluation error, as in NixOS (the stubs are typed).
    let err = eval(&lib, "{ services.narpush.enable = true; services.narpush.cache = \"s3://x\"; services.narpush.secretKeyFile = \"/k\"; systemd.services.narpush-retry.serviceConfg = { }; }", "report")
        .expect_err("a misspelt systemd option must not evaluate");
    assert!(err.contains("serviceConfg"), "{err}");
}

/// A loopback address for this process's fake `s3.homelab.local`, so concurrent
/// runs do not collide on port 443.
fn homelab_addr() -> String {
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        100 + pid % 100,
        (pid / 100) % 250 + 1,
        1 + (pid / 25000) % 250
    )
}

#[test]
fn readme_builder_configuration_is_read_by_narpush_which_pushes_with_it() {
    let Some(lib) =
        nixpkgs_lib("readme_builder_configuration_is_read_by_narpush_which_pushes_with_it")
    else {
        return;
    };
    let (builder, _) = readme_example();
    let toml = eval_ok(&lib, &builder, "narpushToml");
    for want in [
        "to = \"s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local\"",
        "key-file = [\"/etc/nix/cache-key.sec\"]",
        "credentials-file = \"/etc/narpush/credentials\"",
    ] {
        assert!(
            toml.lines().any(|l| l == want),
            "no line {want} in:\n{toml}"
        );
    }

    let dir = temp_dir("module-push");
    let s3 = S3Server::start();
    s3.create_bucket("nix-cache");
    // s3.homelab.local:443 is stunnel, with a certificate from the test's CA.
    let addr = homelab_addr();
    make_ca_and_cert_for(
        &dir,
        "s3.homelab.local",
        "DNS:s3.homelab.local,DNS:nix-cache.s3.homelab.local",
    );
    let _tls = start_stunnel_on(&dir, &addr, 443, s3.port);
    let (sec, public) = nix_keypair(&dir, "nixbuilder-1");
    // An INI file where only the profile the URL names holds the server's keys.
    let creds = dir.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\
             [nixbuilder]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    std::fs::write(dir.join("narpush.toml"), &toml).unwrap();
    let path = add_file(
        &nonce("module"),
        b"pushed with the module's configuration\n",
    );

    // In a mount namespace of its own: /etc and /var/lib as overlays (the host's
    // stay untouched), the files where the configuration names them, then narpush
    // with no configuration flag, reading /etc/narpush.toml as on NixOS.
    let script = r#"
        d=$1; addr=$2; sec=$3; shift 3
        for t in /etc /var/lib; do
          n=$(echo "$t" | tr / _)
          mkdir -p "$d/up$n" "$d/work$n"
          mount -t overlay overlay -o "lowerdir=$t,upperdir=$d/up$n,workdir=$d/work$n" "$t"
        done
        mkdir -p /etc/nix /etc/narpush
        cp "$d/narpush.toml" /etc/narpush.toml
        install -m 600 "$sec" /etc/nix/cache-key.sec
        install -m 600 "$d/credentials" /etc/narpush/credentials
        rm -rf /var/lib/narpush
        printf '%s s3.homelab.local nix-cache.s3.homelab.local\n' "$addr" >> /etc/hosts
        exec "$@"
    "#;
    let c = narpush();
    let program = c.get_program().to_owned();
    let mut outer = Command::new("unshare");
    outer
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-euc",
            script,
            "module-push",
        ])
        .arg(&dir)
        .arg(&addr)
        .arg(&sec)
        .arg(program)
        .args(["push", &path]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    outer
        .env_remove("NARPUSH_CONFIG")
        .env_remove("NIX_SSL_CERT_FILE")
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .env("HOME", &dir);
    let out = outer.output().expect("run unshare");
    assert!(
        out.status.success(),
        "narpush with the module's /etc/narpush.toml failed ({}):\nstdout: {}\nstderr: {}\ns3s-fs: {}",
        out.status,
        stdout(&out),
        stderr(&out),
        s3.log()
    );
    assert!(stdout(&out).contains("1 pushed"), "{}", stdout(&out));

    let bucket = s3.bucket_dir("nix-cache");
    let infos = narinfos(&bucket);
    let info = infos
        .get(&path)
        .unwrap_or_else(|| panic!("no narinfo for {path} in {infos:?}"));
    assert_eq!(info.compression, "zstd");
    assert!(
        info.sigs.iter().any(|s| s.starts_with("nixbuilder-1:")),
        "{:?}",
        info.sigs
    );
    assert_eq!(check_invariants(&bucket), 1);
    let http = HttpServer::serve(&bucket);
    let root = common::nix::fresh_root("module-client");
    let got = realise_from(&http.url(), &root, &[&path], &public);
    assert!(
        got.status.success(),
        "substituting {path}: {}",
        stderr(&got)
    );
}

#[test]
fn gc_on_a_timer_runs_narpush_gc_with_the_configured_age_and_keeps() {
    let Some(lib) = nixpkgs_lib("gc_on_a_timer_runs_narpush_gc_with_the_configured_age_and_keeps")
    else {
        return;
    };
    let (builder, _) = readme_example();
    let configuration = format!(
        "{{ imports = [ ({builder}) ]; services.narpush.gc = {{ enable = true; olderThan = \"14d\"; \
         keep = [ \"/nix/var/nix/profiles/system\" ]; dates = \"daily\"; }}; }}"
    );
    assert_eq!(eval_ok(&lib, &configuration, "failedAssertions"), "");
    let report = eval_ok(&lib, &configuration, "report");
    let exe = "/nix/store/00000000000000000000000000000000-narpush-0.1.0/bin/narpush";
    assert_has_all(
        &report,
        &[
            "\"narpush-gc\":{",
            &format!(
                "\"ExecStart\":\"{exe} gc --older-than 14d --keep /nix/var/nix/profiles/system\""
            ),
            "\"OnCalendar\":\"daily\"",
            "\"Persistent\":true",
        ],
    );
    // Off by default: no gc service or timer.
    let report = eval_ok(&lib, &builder, "report");
    assert!(!report.contains("narpush-gc"), "{report}");
    // An age without a unit is refused at evaluation.
    let bad = format!(
        "{{ imports = [ ({builder}) ]; services.narpush.gc = {{ enable = true; olderThan = \"14\"; }}; }}"
    );
    let err = eval(&lib, &bad, "report").expect_err("olderThan = \"14\" should not evaluate");
    assert!(err.contains("olderThan"), "{err}");
}
