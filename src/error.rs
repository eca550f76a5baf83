//! The one error type of narpush: what went wrong, named with the thing it happened
//! to and, where there is one, how to fix it. `main` prints it once and maps it to an
//! exit code (2 for usage and configuration, 1 for everything at run time).

use std::{fmt, io, path::Path};

#[derive(Debug)]
pub enum Error {
    /// Bad command line or configuration: exit 2.
    Usage(String),
    /// A file or directory operation failed.
    Io { context: String, source: io::Error },
    /// The local Nix (a `nix` child process) failed or said something unexpected.
    Nix(String),
    /// An S3 request failed (after retries where they apply).
    S3(crate::s3::S3Error),
    /// Anything else at run time, already phrased for the user.
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            context: format!("{op} {}", path.display()),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// True for failures of the transport (network, server), as opposed to bad input.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::S3(e) if e.is_transient())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Nix(m) | Error::Other(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::S3(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::s3::S3Error> for Error {
    fn from(e: crate::s3::S3Error) -> Error {
        Error::S3(e)
    }
}

/// An unusable CA bundle reads as it always has: one line, exit code 1.
impl From<crate::s3::TrustError> for Error {
    fn from(e: crate::s3::TrustError) -> Error {
        Error::Other(e.0)
    }
}
