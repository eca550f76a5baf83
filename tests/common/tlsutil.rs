//! TLS for integration tests: a private CA and a 127.0.0.1 certificate made with
//! `openssl`, and `stunnel` (Debian `stunnel4`) terminating TLS in front of a plain
//! HTTP server. Shared by the transport, fault and secrets suites.
#![allow(dead_code)]

use super::s3server::wait_for_addr;
use std::path::Path;
use std::process::{Command, Stdio};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it.
pub fn make_ca_and_cert(dir: &Path) {
    make_ca_and_cert_for(dir, "127.0.0.1", "IP:127.0.0.1,DNS:localhost");
}

/// A CA (`ca.pem`) and a server certificate (`server.pem`, `server.key`) signed by
/// it for `cn` and the subjectAltName list `san` (`IP:…,DNS:…`).
pub fn make_ca_and_cert_for(dir: &Path, cn: &str, san: &str) {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=narpush test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .current_dir(dir));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
        ])
        .args(["-keyout", "server.key", "-out", "server.csr"])
        .current_dir(dir));
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ])
        .args([
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ])
        .current_dir(dir));
}

/// stunnel (Debian package `stunnel4`) terminating TLS in front of the S3 server.
pub struct Stunnel(std::process::Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_stunnel(dir: &Path, tls_port: u16, backend_port: u16) -> Stunnel {
    start_stunnel_on(dir, "127.0.0.1", tls_port, backend_port)
}

/// [`start_stunnel`] accepting on another loopback address (any of 127.0.0.0/8).
pub fn start_stunnel_on(dir: &Path, host: &str, tls_port: u16, backend_port: u16) -> Stunnel {
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[s3]\naccept = {host}:{tls_port}\nconnect = 127.0.0.1:{backend_port}\n\
             cert = {}\nkey = {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("stunnel.log")).unwrap();
    let child = Command::new("stunnel")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn stunnel: install the Debian package stunnel4");
    let st = Stunnel(child);
    wait_for_addr(host, tls_port, "stunnel");
    st
}
