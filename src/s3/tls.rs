//! The TLS client configuration for S3: rustls (ring) with the system's trust store,
//! found the way Nix finds it (`NIX_SSL_CERT_FILE`, `SSL_CERT_FILE`, then the usual
//! distribution bundle paths), falling back to the Mozilla roots of `webpki-roots`
//! when no bundle exists. A file named by an environment variable that is missing
//! or holds no certificates is an error naming it. There is deliberately no way to
//! turn certificate verification off.

use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};
use ureq::tls::{Certificate, RootCerts};

/// A CA bundle that cannot be used, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustError(pub String);

impl std::fmt::Display for TrustError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrustError {}

/// The bundle paths tried after the environment variables, in order.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// A file named by this environment variable (or by the caller).
    Named { var: &'static str, path: PathBuf },
    /// A distribution bundle that exists.
    System(PathBuf),
    /// No bundle: the compiled-in Mozilla roots.
    WebpkiRoots,
}

/// Decide where the roots come from: pure, given an env lookup and an existence test.
pub fn trust_source(
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> TrustSource {
    for var in ["NIX_SSL_CERT_FILE", "SSL_CERT_FILE"] {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            return TrustSource::Named {
                var,
                path: PathBuf::from(v),
            };
        }
    }
    SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| exists(p))
        .map(|p| TrustSource::System(p.to_path_buf()))
        .unwrap_or(TrustSource::WebpkiRoots)
}

/// Load the roots of `source`. A named file must exist and hold at least one usable
/// certificate; a system bundle that yields none falls back to webpki-roots.
pub fn root_certs(source: &TrustSource) -> Result<RootCerts, TrustError> {
    let (path, named) = match source {
        TrustSource::WebpkiRoots => return Ok(RootCerts::WebPki),
        TrustSource::Named { var, path } => (path, Some(*var)),
        TrustSource::System(path) => (path, None),
    };
    let what = match named {
        Some(var) => format!("CA bundle {} (from {var})", path.display()),
        None => format!("CA bundle {}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| TrustError(format!("read {what}: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TrustError(format!("{what} is not valid PEM: {e}")))?;
    // Keep what rustls can use as a trust anchor, as it would when building its store.
    let usable: Vec<Certificate<'static>> = certs
        .iter()
        .filter(|c| {
            let mut one = rustls::RootCertStore::empty();
            one.add_parsable_certificates([(*c).clone()]).0 == 1
        })
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if usable.is_empty() {
        if named.is_some() {
            return Err(TrustError(format!(
                "{what} holds no usable CA certificates; point it at a PEM bundle"
            )));
        }
        return Ok(RootCerts::WebPki);
    }
    Ok(RootCerts::new_with_certs(&usable))
}

/// The roots for an HTTPS S3 endpoint, from the process environment. `trust_file`,
/// when given, replaces the environment lookup (the S3 configuration names one).
pub fn root_certs_with(trust_file: Option<&Path>) -> Result<RootCerts, TrustError> {
    let source = match trust_file {
        Some(p) => TrustSource::Named {
            var: "the S3 configuration",
            path: p.to_path_buf(),
        },
        None => trust_source(&|k| std::env::var(k).ok(), &|p| p.is_file()),
    };
    root_certs(&source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_sources() {
        let none = |_: &str| None;
        let env = |k: &str| (k == "SSL_CERT_FILE").then(|| "/x/ssl.pem".to_string());
        let both = |k: &str| Some(format!("/x/{k}"));
        assert_eq!(
            trust_source(&both, &|_| true),
            TrustSource::Named {
                var: "NIX_SSL_CERT_FILE",
                path: "/x/NIX_SSL_CERT_FILE".into()
            }
        );
        assert_eq!(
            trust_source(&env, &|_| false),
            TrustSource::Named {
                var: "SSL_CERT_FILE",
                path: "/x/ssl.pem".into()
            }
        );
        assert_eq!(
            trust_source(&none, &|p| p == Path::new("/etc/ssl/cert.pem")),
            TrustSource::System("/etc/ssl/cert.pem".into())
        );
        assert_eq!(trust_source(&none, &|_| false), TrustSource::WebpkiRoots);
    }

    #[test]
    fn named_file_errors_name_it() {
        let missing = TrustSource::Named {
            var: "SSL_CERT_FILE",
            path: "/nonexistent/ca.pem".into(),
        };
        let m = root_certs(&missing).unwrap_err().to_string();
        assert!(
            m.contains("/nonexistent/ca.pem") && m.contains("SSL_CERT_FILE"),
            "{m}"
        );
        let p = std::env::temp_dir().join(format!("narpush-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&p, "no certificates here\n").unwrap();
        let m = root_certs(&TrustSource::Named {
            var: "SSL_CERT_FILE",
            path: p.clone(),
        })
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_file(&p);
        assert!(m.contains("no usable CA certificates"), "{m}");
    }

    #[test]
    fn webpki_fallback_has_roots() {
        assert!(matches!(
            root_certs(&TrustSource::WebpkiRoots).unwrap(),
            RootCerts::WebPki
        ));
    }
}
