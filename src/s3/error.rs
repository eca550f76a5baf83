//! The S3 layer's one error type: a failed operation with what it was done to
//! (operation, key, bucket, endpoint), what went wrong (S3's status and XML code, a
//! transport failure, a protocol surprise), the attempts made, and a hint that says
//! what to fix. `is_transient` decides what the client retries.

use std::fmt;
use std::time::Duration;

/// What went wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// The server answered with an error status (or a 200 carrying `<Error>`).
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// No usable answer: connection, TLS, timeout, or the connection dropped.
    Transport {
        kind: TransportKind,
        message: String,
    },
    /// An answer we could not make sense of.
    Protocol(String),
    /// Misuse detected locally (too many parts, an upload already failed, …).
    Local(String),
}

/// Classes of transport failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Dns,
    Connect,
    Timeout,
    /// The server's certificate did not verify.
    Tls,
    /// The connection broke mid-request or mid-response.
    Io,
    Other,
}

/// A failed S3 operation, with what it was done to. Boxed so that `Result`s stay
/// small; the fields are reached through `Deref` (`e.operation`, `e.kind`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error(pub Box<S3ErrorInfo>);

impl std::ops::Deref for S3Error {
    type Target = S3ErrorInfo;
    fn deref(&self) -> &S3ErrorInfo {
        &self.0
    }
}

impl From<S3ErrorInfo> for S3Error {
    fn from(info: S3ErrorInfo) -> S3Error {
        S3Error(Box::new(info))
    }
}

/// The details of an [`S3Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3ErrorInfo {
    pub operation: &'static str,
    pub key: Option<String>,
    pub bucket: String,
    /// `scheme://host[:port]`.
    pub endpoint: String,
    pub kind: S3ErrorKind,
    /// Attempts made (1 when not retried).
    pub attempts: u32,
    /// Time spent, retries included.
    pub elapsed: Duration,
}

/// S3 error codes worth retrying.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    // As Nix retries it: each attempt is signed anew, and a clock being stepped by NTP
    // is right again a moment later.
    "RequestTimeTooSkewed",
];

impl S3Error {
    /// Worth retrying: 5xx (but 501 Not Implemented), 429, throttling/timeouts,
    /// dropped connections.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            S3ErrorKind::Status { status, code, .. } => {
                (*status >= 500 && *status != 501 && code.as_deref() != Some("NotImplemented"))
                    || *status == 429
                    || code
                        .as_deref()
                        .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            S3ErrorKind::Transport { kind, .. } => {
                matches!(
                    kind,
                    TransportKind::Connect | TransportKind::Timeout | TransportKind::Io
                )
            }
            S3ErrorKind::Protocol(_) | S3ErrorKind::Local(_) => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            S3ErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The S3 error code (`NoSuchBucket`, …), if any.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            S3ErrorKind::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Recover an `S3Error` carried in an `io::Error` (from `StreamingUpload`'s
    /// `Write`), or give the `io::Error` back.
    pub fn from_io(e: std::io::Error) -> Result<S3Error, std::io::Error> {
        if !e.get_ref().is_some_and(|i| i.is::<S3Error>()) {
            return Err(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<S3Error>()) {
            Some(Ok(s3)) => Ok(*s3),
            Some(Err(other)) => Err(std::io::Error::new(kind, other)),
            None => Err(std::io::Error::from(kind)),
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match &self.kind {
            S3ErrorKind::Status { status, code, .. } => match code.as_deref() {
                Some("SignatureDoesNotMatch") => Some("check the secret key"),
                // s3s answers NotSignedUp for an access key it does not know.
                Some("InvalidAccessKeyId") | Some("NotSignedUp") => Some("check the access key id"),
                Some("NoSuchBucket") => Some("create the bucket or fix the store URL"),
                // S3 answers a HEAD of a missing key 403, not 404, to a user who may
                // not list the bucket.
                Some("AccessDenied") if self.operation == "HeadObject" => Some(
                    "check the access key and its permissions; without s3:ListBucket a missing key also reads as 403 (narpush init --print-policy prints what it needs)",
                ),
                Some("AccessDenied") => {
                    Some("check the access key and the bucket policy or permissions it has")
                }
                Some("RequestTimeTooSkewed") => Some("check this machine's clock"),
                Some("InvalidPart") | Some("InvalidPartOrder") => {
                    Some("the uploaded parts did not match; retry the push")
                }
                Some("PermanentRedirect") | Some("AuthorizationHeaderMalformed") => {
                    Some("check region= in the store URL")
                }
                _ if *status == 301 || *status == 307 => Some("check region= in the store URL"),
                _ => None,
            },
            S3ErrorKind::Transport { kind: TransportKind::Tls, .. } => Some(
                "if the server uses a private CA, point SSL_CERT_FILE or NIX_SSL_CERT_FILE at its PEM file",
            ),
            S3ErrorKind::Transport { kind: TransportKind::Connect, .. } => {
                Some("check that the server is running and endpoint= is right")
            }
            S3ErrorKind::Transport { kind: TransportKind::Dns, .. } => {
                Some("check the host name in endpoint=")
            }
            _ => None,
        }
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation)?;
        if let Some(k) = &self.key {
            write!(f, " {k}")?;
        }
        write!(f, " on bucket '{}' at {}: ", self.bucket, self.endpoint)?;
        match &self.kind {
            S3ErrorKind::Status {
                status,
                code,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                if let Some(m) = message.as_deref().filter(|m| !m.is_empty()) {
                    write!(f, ": {}", m.trim_end_matches('.'))?;
                }
            }
            S3ErrorKind::Transport { message, .. } => f.write_str(message)?,
            S3ErrorKind::Protocol(m) | S3ErrorKind::Local(m) => f.write_str(m)?,
        }
        if self.attempts > 1 {
            write!(
                f,
                " (after {} attempts in {:.1}s)",
                self.attempts,
                self.elapsed.as_secs_f64()
            )?;
        }
        if let Some(h) = self.hint() {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for S3Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: S3ErrorKind) -> S3Error {
        S3Error::from(S3ErrorInfo {
            operation: "PutObject",
            key: Some("nar/abc.nar.zst".into()),
            bucket: "nix-cache".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            kind,
            attempts: 1,
            elapsed: Duration::ZERO,
        })
    }

    fn status(status: u16, code: &str) -> S3ErrorKind {
        S3ErrorKind::Status {
            status,
            code: Some(code.into()),
            message: Some("msg.".into()),
        }
    }

    #[test]
    fn display_is_one_line_with_hint() {
        let e = err(S3ErrorKind::Status {
            status: 403,
            code: Some("SignatureDoesNotMatch".into()),
            message: Some(
                "The request signature we calculated does not match the signature you provided."
                    .into(),
            ),
        });
        assert_eq!(
            e.to_string(),
            "PutObject nar/abc.nar.zst on bucket 'nix-cache' at http://127.0.0.1:9000: HTTP 403 SignatureDoesNotMatch: \
             The request signature we calculated does not match the signature you provided; check the secret key"
        );
        let mut e = err(S3ErrorKind::Transport {
            kind: TransportKind::Connect,
            message: "cannot connect: Connection refused (os error 111)".into(),
        });
        e.0.attempts = 5;
        e.0.elapsed = Duration::from_millis(2500);
        assert_eq!(
            e.to_string(),
            "PutObject nar/abc.nar.zst on bucket 'nix-cache' at http://127.0.0.1:9000: cannot connect: Connection refused (os error 111) \
             (after 5 attempts in 2.5s); check that the server is running and endpoint= is right"
        );
        assert!(err(status(404, "NoSuchBucket"))
            .to_string()
            .ends_with("; create the bucket or fix the store URL"));
        assert!(err(status(403, "AccessDenied"))
            .to_string()
            .contains("policy"));
        let mut head = err(status(403, "AccessDenied"));
        head.0.operation = "HeadObject";
        assert!(head.to_string().contains("without s3:ListBucket"), "{head}");
    }

    #[test]
    fn what_is_transient() {
        for k in [
            status(500, "InternalError"),
            status(503, "SlowDown"),
            status(429, "TooMany"),
            status(400, "RequestTimeout"),
            status(403, "RequestTimeTooSkewed"),
        ] {
            assert!(err(k).is_transient());
        }
        for k in [
            status(403, "SignatureDoesNotMatch"),
            status(403, "AccessDenied"),
            status(404, "NoSuchBucket"),
            status(400, "InvalidPart"),
        ] {
            assert!(!err(k).is_transient());
        }
        let t = |kind| {
            err(S3ErrorKind::Transport {
                kind,
                message: String::new(),
            })
            .is_transient()
        };
        assert!(t(TransportKind::Connect) && t(TransportKind::Timeout) && t(TransportKind::Io));
        assert!(!t(TransportKind::Tls) && !t(TransportKind::Dns));
    }

    #[test]
    fn io_error_round_trip() {
        let e = err(status(500, "InternalError"));
        let io = std::io::Error::other(e.clone());
        assert_eq!(S3Error::from_io(io).unwrap(), e);
        assert!(S3Error::from_io(std::io::Error::other("x")).is_err());
    }
}
