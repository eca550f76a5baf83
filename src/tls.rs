//! The TLS client configuration for S3: rustls (ring) with the system's trust store,
//! found the way Nix finds it (`NIX_SSL_CERT_FILE`, `SSL_CERT_FILE`, then the usual
//! distribution bundle paths), falling back to the Mozilla roots of `webpki-roots`
//! when no bundle exists. A file named by an environment variable that is missing
//! or holds no certificates is an error naming it. There is deliberately no way to
//! turn certificate verification off.

use crate::error::Error;
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub fn root_store(source: &TrustSource) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    let (path, named) = match source {
        TrustSource::WebpkiRoots => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(store);
        }
        TrustSource::Named { var, path } => (path, Some(*var)),
        TrustSource::System(path) => (path, None),
    };
    let what = match named {
        Some(var) => format!("CA bundle {} (from {var})", path.display()),
        None => format!("CA bundle {}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| Error::Other(format!("read {what}: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Other(format!("{what} is not valid PEM: {e}")))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        if named.is_some() {
            return Err(Error::Other(format!(
                "{what} holds no usable CA certificates; point it at a PEM bundle"
            )));
        }
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(store)
}

/// A client config trusting `roots`.
pub fn config_with_roots(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The client config for ureq's `AgentBuilder::tls_config`, from the process
/// environment. `trust_file`, when given, replaces the environment lookup (tests).
pub fn client_config_with(trust_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let source = match trust_file {
        Some(p) => TrustSource::Named {
            var: "the S3 configuration",
            path: p.to_path_buf(),
        },
        None => trust_source(&|k| std::env::var(k).ok(), &|p| p.is_file()),
    };
    config_with_roots(root_store(&source)?)
}

/// The client config from the process environment.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    client_config_with(None)
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
        let m = root_store(&missing).unwrap_err().to_string();
        assert!(
            m.contains("/nonexistent/ca.pem") && m.contains("SSL_CERT_FILE"),
            "{m}"
        );
        let p = std::env::temp_dir().join(format!("narpush-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&p, "no certificates here\n").unwrap();
        let m = root_store(&TrustSource::Named {
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
        assert!(!root_store(&TrustSource::WebpkiRoots).unwrap().is_empty());
        assert!(config_with_roots(root_store(&TrustSource::WebpkiRoots).unwrap()).is_ok());
    }
}
