//! The S3 operations narpush needs, over one ureq `Agent`: objects (HEAD, GET, PUT,
//! batch DELETE, ListObjectsV2), multipart uploads (create, part, complete, abort,
//! list) and `StreamingUpload`, which turns a stream of unknown length into one
//! PutObject or a multipart upload with bounded memory. Every request is signed with
//! SigV4 over its whole body and sent with a Content-Length (never chunked).
//! Failures keep S3's XML error (`<Code>`, `<Message>`) with the operation, key,
//! bucket and endpoint, and transient ones are retried with capped exponential
//! backoff and full jitter inside a total time budget. Credentials and signatures
//! never appear in an error or a log line ([`redact_authorization`]).

use crate::creds::Credentials;
use crate::error::Error;
use crate::sigv4;
use crate::store_url::{Endpoint, S3Url, MIN_PART_SIZE};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::sigv4::redact_authorization;

/// Most parts a multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Idle connections kept for reuse, at most: more than any sensible `--jobs`; a pool
/// only ever holds as many as were open at once.
const POOL_SIZE: usize = 64;
/// Error bodies are read up to this many bytes.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// When and how often to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff base: the n-th retry sleeps a random time up to `base * 2^(n-1)`.
    pub base_delay: Duration,
    /// Cap of one sleep.
    pub max_delay: Duration,
    /// Total time budget of one operation, sleeps included.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_total: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The sleep before retry number `retry` (1-based), full jitter: `rand01` in
    /// [0, 1) times `min(max_delay, base * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32, rand01: f64) -> Duration {
        let exp = self.base_delay.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        exp.min(self.max_delay).mul_f64(rand01.clamp(0.0, 1.0))
    }
}

/// Everything a [`Client`] needs.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: Endpoint,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub credentials: Credentials,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// The longest one read or write on a connection may wait.
    pub io_timeout: Duration,
    /// A pooled connection idle for longer is not reused; zero: no reuse.
    pub idle_timeout: Duration,
    /// `x-amz-storage-class` for new objects.
    pub storage_class: Option<String>,
    /// A PEM CA bundle to trust instead of the environment's (see `tls`).
    pub trust_file: Option<PathBuf>,
}

impl S3Config {
    pub fn from_url(url: &S3Url, creds: Credentials) -> S3Config {
        S3Config {
            endpoint: url.endpoint.clone(),
            bucket: url.bucket.clone(),
            region: url.region.clone(),
            path_style: url.path_style(),
            credentials: creds,
            retry: RetryPolicy {
                max_attempts: url.retry_attempts,
                ..RetryPolicy::default()
            },
            connect_timeout: Duration::from_secs(url.connect_timeout),
            io_timeout: Duration::from_secs(url.io_timeout),
            idle_timeout: Duration::from_secs(url.idle_timeout),
            storage_class: url.storage_class.clone(),
            trust_file: None,
        }
    }
}

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

/// An S3 client for one bucket; cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: S3Config,
    agent: ureq::Agent,
    rng: AtomicU64,
    /// Set (when `fail_fast`) once a request ran out of retries because the server
    /// could not be reached or stopped answering (connect failures, timeouts): later
    /// requests fail at once instead of each waiting out its own timeouts, so a hook
    /// over a dead link takes one request's time budget, not one per batch of paths.
    gave_up: std::sync::Mutex<Option<String>>,
    /// Whether `gave_up` is used at all (see [`Client::fail_fast_after_outage`]).
    fail_fast: std::sync::atomic::AtomicBool,
    /// What a GET said about the first HEAD answered 403 (once asked).
    head_403: std::sync::Mutex<Option<Option<S3Reason>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("bucket", &self.inner.cfg.bucket)
            .finish()
    }
}

/// S3's `<Code>` and `<Message>` of an error answer.
type S3Reason = (String, Option<String>);

/// A response, read whole.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request to make (possibly several times).
struct Call<'a> {
    op: &'static str,
    key: Option<&'a str>,
    method: &'static str,
    query: &'a [(&'a str, &'a str)],
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
    /// A longer time to wait for the answer than the configured I/O timeout.
    patience: Option<Duration>,
}

impl Client {
    pub fn new(cfg: S3Config) -> Result<Client, Error> {
        let tls = match cfg.endpoint.scheme {
            crate::store_url::Scheme::Https => ureq::tls::TlsConfig::builder()
                .root_certs(crate::tls::root_certs_with(cfg.trust_file.as_deref())?)
                .build(),
            crate::store_url::Scheme::Http => ureq::tls::TlsConfig::default(),
        };
        // Connections are reused while idle for less than `idle_timeout` (a server or
        // a NAT box may drop one silently after that); 0 turns reuse off. Every read
        // and write on a connection, new or reused, waits at most `io_timeout`, and so
        // does the whole head of each answer.
        let pool = if cfg.idle_timeout.is_zero() {
            0
        } else {
            POOL_SIZE
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("narpush/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.io_timeout))
            .timeout_per_write(Some(cfg.io_timeout))
            // The head of the answer, all of it, within the I/O timeout too: a server
            // that trickles it never trips a per-read timeout.
            .timeout_recv_response(Some(cfg.io_timeout))
            .max_idle_connections(pool)
            .max_idle_connections_per_host(pool)
            .max_idle_age(cfg.idle_timeout)
            .tls_config(tls)
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            Resolver::default(),
        );
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id()).rotate_left(32);
        Ok(Client {
            inner: Arc::new(Inner {
                agent,
                cfg,
                rng: AtomicU64::new(seed | 1),
                gave_up: std::sync::Mutex::new(None),
                fail_fast: std::sync::atomic::AtomicBool::new(false),
                head_403: std::sync::Mutex::new(None),
            }),
        })
    }

    /// e.g. `bucket 'nix-cache' at http://127.0.0.1:9000`.
    pub fn describe(&self) -> String {
        format!(
            "bucket '{}' at {}",
            self.inner.cfg.bucket,
            self.inner.cfg.endpoint.base_url()
        )
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    /// Size of the object, `None` if it does not exist (404).
    pub fn head_object(&self, key: &str) -> Result<Option<u64>, S3Error> {
        Ok(self.head_object_modified(key)?.map(|(len, _)| len))
    }

    /// A HEAD answered 403, which has no body to say why: a wrong secret, an unknown
    /// access key and a policy that denies all look alike. The first time in this
    /// client's life, ask with a GET of the same key, whose error body has S3's code,
    /// and keep the answer for later 403s on HEAD (one extra request per run).
    fn explain_head_403(&self, key: &str, mut err: S3Error) -> S3Error {
        let learned = {
            let mut g = self
                .inner
                .head_403
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            g.get_or_insert_with(|| {
                let get = Call {
                    op: "GetObject",
                    key: Some(key),
                    method: "GET",
                    query: &[],
                    headers: &[],
                    body: &[],
                    patience: None,
                };
                match self.attempt(&get, sigv4::EMPTY_SHA256).0 {
                    Err(S3ErrorKind::Status {
                        status: 403,
                        code: Some(code),
                        message,
                    }) => Some((code, message)),
                    _ => None,
                }
            })
            .clone()
        };
        if let (Some((c, m)), S3ErrorKind::Status { code, message, .. }) =
            (learned, &mut err.0.kind)
        {
            (*code, *message) = (Some(c), m);
        }
        err
    }

    /// The object's bytes, `None` if there is no such key.
    pub fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        let call = Call {
            op: "GetObject",
            key: Some(key),
            method: "GET",
            query: &[],
            headers: &[],
            body: &[],
            patience: None,
        };
        match self.execute(&call) {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.status() == Some(404) && e.code() != Some("NoSuchBucket") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put_object(&self, key: &str, body: &[u8], content_type: &str) -> Result<(), S3Error> {
        let mut headers = vec![("content-type", content_type)];
        if let Some(sc) = &self.inner.cfg.storage_class {
            headers.push(("x-amz-storage-class", sc));
        }
        let call = Call {
            op: "PutObject",
            key: Some(key),
            method: "PUT",
            query: &[],
            headers: &headers,
            body,
            patience: None,
        };
        self.execute(&call).map(drop)
    }

    /// Start a multipart upload; returns its upload id.
    pub fn create_multipart_upload(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<String, S3Error> {
        let mut headers = vec![("content-type", content_type)];
        if let Some(sc) = &self.inner.cfg.storage_class {
            headers.push(("x-amz-storage-class", sc));
        }
        let call = Call {
            op: "CreateMultipartUpload",
            key: Some(key),
            method: "POST",
            query: &[("uploads", "")],
            headers: &headers,
            body: &[],
            patience: None,
        };
        let r = self.execute(&call)?;
        let text = String::from_utf8_lossy(&r.body);
        xml::text(&text, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| self.protocol(&call, "no <UploadId> in the answer"))
    }

    /// Upload one part; returns its ETag (quotes included, as S3 sends it).
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: &[u8],
    ) -> Result<String, S3Error> {
        let n = part_number.to_string();
        let query = [("partNumber", n.as_str()), ("uploadId", upload_id)];
        let call = Call {
            op: "UploadPart",
            key: Some(key),
            method: "PUT",
            query: &query,
            headers: &[],
            body,
            patience: None,
        };
        let r = self.execute(&call)?;
        r.header("etag")
            .map(str::to_string)
            .ok_or_else(|| self.protocol(&call, "no ETag in the answer"))
    }

    pub fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        self.complete_multipart_upload_of(key, upload_id, parts, 0)
    }

    /// CompleteMultipartUpload of an object of `size` bytes: servers assemble the
    /// object before they answer (AWS: "could take several minutes"), so the answer
    /// is awaited for the I/O timeout plus 30 s per GiB.
    pub fn complete_multipart_upload_of(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        size: u64,
    ) -> Result<(), S3Error> {
        let mut body = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (n, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let call = Call {
            op: "CompleteMultipartUpload",
            key: Some(key),
            method: "POST",
            query: &[("uploadId", upload_id)],
            headers: &[("content-type", "application/xml")],
            body: body.as_bytes(),
            patience: Some(
                self.inner.cfg.io_timeout + Duration::from_secs(30 * size.div_ceil(1 << 30)),
            ),
        };
        self.execute(&call).map(drop)
    }

    /// Abort a multipart upload; an upload that no longer exists is fine.
    pub fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let call = Call {
            op: "AbortMultipartUpload",
            key: Some(key),
            method: "DELETE",
            query: &[("uploadId", upload_id)],
            headers: &[],
            body: &[],
            patience: None,
        };
        match self.execute(&call) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// All `(key, size)` under `prefix`, following continuation tokens.
    pub fn list_objects_v2(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let mut out = Vec::new();
        self.list_objects_pages(prefix, &mut |page| {
            out.extend(page.into_iter().map(|o| (o.key, o.size)));
            Ok(())
        })
        .map_err(|e| match e {
            Error::S3(e) => e,
            other => self.protocol_for("ListObjectsV2", &other.to_string()),
        })?;
        Ok(out)
    }

    /// Every object under `prefix`, one page (up to 1000) at a time, so a listing of
    /// any size needs one page of memory; `page` may stop the listing with an error.
    pub fn list_objects_pages(
        &self,
        prefix: &str,
        page: &mut dyn FnMut(Vec<ObjectEntry>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let call = Call {
                op: "ListObjectsV2",
                key: None,
                method: "GET",
                query: &query,
                headers: &[],
                body: &[],
                patience: None,
            };
            let r = self.execute(&call)?;
            let text = String::from_utf8_lossy(&r.body);
            let mut out = Vec::new();
            for c in xml::blocks(&text, "Contents") {
                let key = xml::text(c, "Key")
                    .ok_or_else(|| self.protocol(&call, "a <Contents> without <Key>"))?;
                let size = xml::text(c, "Size")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.protocol(&call, "a <Contents> without a numeric <Size>"))?;
                // A listing without a time (no real server omits it) reads as new:
                // gc never deletes what it cannot date.
                let last_modified = match xml::text(c, "LastModified") {
                    None => i64::MAX,
                    Some(t) => parse_iso8601(&t).ok_or_else(|| {
                        self.protocol(&call, "a <Contents> with an invalid <LastModified>")
                    })?,
                };
                out.push(ObjectEntry {
                    key,
                    size,
                    last_modified,
                });
            }
            page(out)?;
            if xml::text(&text, "IsTruncated").as_deref() != Some("true") {
                return Ok(());
            }
            match xml::text(&text, "NextContinuationToken").filter(|t| !t.is_empty()) {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => {
                    return Err(self
                        .protocol(
                            &call,
                            "a truncated listing without a new NextContinuationToken",
                        )
                        .into())
                }
            }
        }
    }

    /// Multipart uploads in progress: `(key, upload id)`.
    pub fn list_multipart_uploads(&self) -> Result<Vec<(String, String)>, S3Error> {
        Ok(self
            .list_multipart_uploads_since()?
            .into_iter()
            .map(|(k, id, _)| (k, id))
            .collect())
    }

    /// Multipart uploads in progress: `(key, upload id, initiated)` with the time in
    /// Unix seconds (`None` when the server does not say).
    pub fn list_multipart_uploads_since(
        &self,
    ) -> Result<Vec<(String, String, Option<i64>)>, S3Error> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("uploads", "")];
            if let Some((k, u)) = &markers {
                query.push(("key-marker", k));
                query.push(("upload-id-marker", u));
            }
            let call = Call {
                op: "ListMultipartUploads",
                key: None,
                method: "GET",
                query: &query,
                headers: &[],
                body: &[],
                patience: None,
            };
            let r = self.execute(&call)?;
            let text = String::from_utf8_lossy(&r.body);
            for u in xml::blocks(&text, "Upload") {
                let initiated = xml::text(u, "Initiated").and_then(|t| parse_iso8601(&t));
                match (xml::text(u, "Key"), xml::text(u, "UploadId")) {
                    (Some(k), Some(id)) => out.push((k, id, initiated)),
                    _ => {
                        return Err(self.protocol(&call, "an <Upload> without <Key> or <UploadId>"))
                    }
                }
            }
            if xml::text(&text, "IsTruncated").as_deref() != Some("true") {
                return Ok(out);
            }
            let next = (
                xml::text(&text, "NextKeyMarker").unwrap_or_default(),
                xml::text(&text, "NextUploadIdMarker").unwrap_or_default(),
            );
            if next.0.is_empty() || Some(&next) == markers.as_ref() {
                return Err(self.protocol(&call, "a truncated listing without new markers"));
            }
            markers = Some(next);
        }
    }

    /// Delete keys, 1000 per request; a key that does not exist is not an error.
    pub fn delete_objects(&self, keys: &[String]) -> Result<(), S3Error> {
        use md5::Digest;
        for batch in keys.chunks(1000) {
            let mut body = String::from(
                "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>",
            );
            for k in batch {
                body.push_str(&format!("<Object><Key>{}</Key></Object>", xml::escape(k)));
            }
            body.push_str("</Delete>");
            let md5 = crate::encoding::base64_encode(&md5::Md5::digest(body.as_bytes()));
            let headers = [
                ("content-type", "application/xml"),
                ("content-md5", md5.as_str()),
            ];
            let call = Call {
                op: "DeleteObjects",
                key: None,
                method: "POST",
                query: &[("delete", "")],
                headers: &headers,
                body: body.as_bytes(),
                patience: None,
            };
            let r = self.execute(&call)?;
            let text = String::from_utf8_lossy(&r.body);
            if let Some(e) = xml::blocks(&text, "Error").first() {
                let key = xml::text(e, "Key");
                return Err(S3ErrorInfo {
                    key,
                    kind: S3ErrorKind::Status {
                        status: r.status,
                        code: xml::text(e, "Code"),
                        message: xml::text(e, "Message"),
                    },
                    ..self.error_base(&call)
                }
                .into());
            }
        }
        Ok(())
    }

    /// Create the bucket; one that exists and is ours already is fine.
    pub fn create_bucket(&self) -> Result<(), S3Error> {
        let cfg = &self.inner.cfg;
        let body = if cfg.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                xml::escape(&cfg.region)
            )
        };
        let call = Call {
            op: "CreateBucket",
            key: None,
            method: "PUT",
            query: &[],
            headers: &[],
            body: body.as_bytes(),
            patience: None,
        };
        match self.execute(&call) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            // Some servers (s3s-fs, older MinIO) answer this for their owner too: the
            // bucket is ours when these credentials may list it.
            Err(e) if e.code() == Some("BucketAlreadyExists") && self.can_list() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a one-key listing of the bucket succeeds with these credentials.
    fn can_list(&self) -> bool {
        let call = Call {
            op: "ListObjectsV2",
            key: None,
            method: "GET",
            query: &[("list-type", "2"), ("max-keys", "1")],
            headers: &[],
            body: &[],
            patience: None,
        };
        self.execute(&call).is_ok()
    }

    /// Size and Last-Modified (Unix seconds, `None` when the server does not say) of
    /// an object; `None` if it does not exist.
    pub fn head_object_modified(&self, key: &str) -> Result<Option<(u64, Option<i64>)>, S3Error> {
        let call = Call {
            op: "HeadObject",
            key: Some(key),
            method: "HEAD",
            query: &[],
            headers: &[],
            body: &[],
            patience: None,
        };
        match self.execute(&call) {
            Ok(r) => {
                let len = r
                    .header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| self.protocol(&call, "no Content-Length in the answer"))?;
                let modified = r.header("last-modified").and_then(parse_http_date);
                Ok(Some((len, modified)))
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) if e.status() == Some(403) => Err(self.explain_head_403(key, e)),
            Err(e) => Err(e),
        }
    }

    /// Bytes `start..start+len` of an object (fewer at its end), `None` if it does
    /// not exist. Reading a large object in ranges keeps memory to one range.
    pub fn get_object_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, S3Error> {
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        let call = Call {
            op: "GetObject",
            key: Some(key),
            method: "GET",
            query: &[],
            headers: &[("range", &range)],
            body: &[],
            patience: None,
        };
        match self.execute(&call) {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if e.status() == Some(404) && e.code() != Some("NoSuchBucket") => Ok(None),
            // A range starting at the end of the object.
            Err(e) if e.status() == Some(416) => Ok(Some(Vec::new())),
            Err(e) => Err(e),
        }
    }

    /// PutBucketPolicy with this policy document (JSON).
    pub fn put_bucket_policy(&self, policy: &str) -> Result<(), S3Error> {
        let call = Call {
            op: "PutBucketPolicy",
            key: None,
            method: "PUT",
            query: &[("policy", "")],
            headers: &[("content-type", "application/json")],
            body: policy.as_bytes(),
            patience: None,
        };
        self.execute(&call).map(drop)
    }

    /// PutBucketLifecycleConfiguration with this `<LifecycleConfiguration>` (XML).
    /// S3 requires Content-MD5 here, as for DeleteObjects.
    pub fn put_bucket_lifecycle(&self, config_xml: &str) -> Result<(), S3Error> {
        use md5::Digest;
        let md5 = crate::encoding::base64_encode(&md5::Md5::digest(config_xml.as_bytes()));
        let headers = [
            ("content-type", "application/xml"),
            ("content-md5", md5.as_str()),
        ];
        let call = Call {
            op: "PutBucketLifecycleConfiguration",
            key: None,
            method: "PUT",
            query: &[("lifecycle", "")],
            headers: &headers,
            body: config_xml.as_bytes(),
            patience: None,
        };
        self.execute(&call).map(drop)
    }

    fn protocol_for(&self, op: &'static str, what: &str) -> S3Error {
        S3ErrorInfo {
            kind: S3ErrorKind::Protocol(format!("unexpected answer: {what}")),
            ..self.error_for(op, None)
        }
        .into()
    }

    fn error_base(&self, call: &Call<'_>) -> S3ErrorInfo {
        self.error_for(call.op, call.key)
    }

    fn error_for(&self, operation: &'static str, key: Option<&str>) -> S3ErrorInfo {
        S3ErrorInfo {
            operation,
            key: key.map(str::to_string),
            bucket: self.inner.cfg.bucket.clone(),
            endpoint: self.inner.cfg.endpoint.base_url(),
            kind: S3ErrorKind::Local(String::new()),
            attempts: 1,
            elapsed: Duration::ZERO,
        }
    }

    fn protocol(&self, call: &Call<'_>, what: &str) -> S3Error {
        S3ErrorInfo {
            kind: S3ErrorKind::Protocol(format!("unexpected answer: {what}")),
            ..self.error_base(call)
        }
        .into()
    }

    fn random01(&self) -> f64 {
        // xorshift64*: jitter only, not security.
        let mut x = self.inner.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.inner.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Host header value and unencoded path for `key` (or the bucket itself).
    fn target(&self, key: Option<&str>) -> (String, String) {
        let cfg = &self.inner.cfg;
        let key = key.unwrap_or("");
        if cfg.path_style {
            let path = if key.is_empty() {
                format!("/{}", cfg.bucket)
            } else {
                format!("/{}/{key}", cfg.bucket)
            };
            (cfg.endpoint.authority(), path)
        } else {
            let host = format!("{}.{}", cfg.bucket, cfg.endpoint.host);
            let ep = Endpoint {
                host,
                ..cfg.endpoint.clone()
            };
            (ep.authority(), format!("/{key}"))
        }
    }

    /// Run a call with retries.
    fn execute(&self, call: &Call<'_>) -> Result<Resp, S3Error> {
        let policy = &self.inner.cfg.retry;
        let start = Instant::now();
        // Aborting an upload is always tried: skipping it would leave the upload behind.
        if call.op != "AbortMultipartUpload" {
            let gave_up = self.inner.gave_up.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(why) = gave_up.as_deref() {
                return Err(S3Error::from(S3ErrorInfo {
                    kind: S3ErrorKind::Local(format!(
                        "not tried: an earlier request already failed ({why})"
                    )),
                    ..self.error_base(call)
                }));
            }
        }
        let payload_hash = sigv4::sha256_hex(call.body);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (result, retry_after) = self.attempt(call, &payload_hash);
            let err = match result {
                Ok(r) => return Ok(r),
                Err(kind) => S3Error::from(S3ErrorInfo {
                    kind,
                    attempts: attempt,
                    elapsed: start.elapsed(),
                    ..self.error_base(call)
                }),
            };
            if !err.is_transient() || attempt >= policy.max_attempts.max(1) {
                return Err(self.note_gave_up(err));
            }
            let remaining = policy.max_total.saturating_sub(start.elapsed());
            let mut sleep = policy.backoff(attempt, self.random01());
            if let Some(ra) = retry_after {
                sleep = sleep.max(ra);
            }
            // Retry-After is honoured up to the remaining budget.
            let sleep = sleep.min(remaining);
            if remaining < Duration::from_millis(50) {
                return Err(self.note_gave_up(err));
            }
            std::thread::sleep(sleep);
        }
    }

    /// From now on, once one request runs out of retries because the server could
    /// not be reached or stopped answering, fail every later request at once (except
    /// aborts). Meant for one run over many paths; off by default, so a long-lived
    /// client recovers when the server comes back.
    pub fn fail_fast_after_outage(&self) {
        self.inner.fail_fast.store(true, Ordering::Relaxed);
    }

    /// Remember that the server is unreachable or silent when `err` says so.
    fn note_gave_up(&self, err: S3Error) -> S3Error {
        if !self.inner.fail_fast.load(Ordering::Relaxed) {
            return err;
        }
        if let S3ErrorKind::Transport {
            kind: TransportKind::Connect | TransportKind::Timeout,
            message,
        } = &err.kind
        {
            let mut g = self.inner.gave_up.lock().unwrap_or_else(|p| p.into_inner());
            g.get_or_insert_with(|| format!("{} {}", err.operation, message));
        }
        err
    }

    /// Send one request; `patience` replaces the I/O timeout for reading the answer.
    fn run<B: ureq::AsSendBody>(
        &self,
        req: Result<ureq::http::Request<B>, ureq::http::Error>,
        patience: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let agent = &self.inner.agent;
        let mut req = agent.configure_request(req?);
        if let Some(t) = patience {
            req = req.timeout_per_read(Some(t)).timeout_recv_response(Some(t));
        }
        agent.run(req.build())
    }

    /// One attempt: the response, or the failure and any Retry-After.
    fn attempt(
        &self,
        call: &Call<'_>,
        payload_hash: &str,
    ) -> (Result<Resp, S3ErrorKind>, Option<Duration>) {
        let cfg = &self.inner.cfg;
        let (host, path) = self.target(call.key);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let req = sigv4::Request {
            method: call.method,
            host: &host,
            path: &path,
            query: call.query,
            headers: call.headers,
            payload_sha256: payload_hash,
        };
        let signed = sigv4::sign(
            &req,
            &cfg.credentials,
            &cfg.region,
            "s3",
            sigv4::UtcTime::from_unix(now),
        );
        let query = sigv4::canonical_query(call.query);
        let mut url = format!(
            "{}://{host}{}",
            cfg.endpoint.scheme.as_str(),
            sigv4::canonical_uri(&path)
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        let mut req = ureq::http::Request::builder().method(call.method).uri(&url);
        for (n, v) in call.headers {
            req = req.header(*n, *v);
        }
        for (n, v) in &signed {
            req = req.header(*n, v);
        }
        let sent = if call.body.is_empty() && matches!(call.method, "GET" | "HEAD" | "DELETE") {
            self.run(req.body(()), call.patience)
        } else {
            self.run(req.body(call.body), call.patience)
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return (Err(transport_kind(&e)), None),
        };
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let ok = (200..300).contains(&status);
        let limit = if ok { u64::MAX } else { MAX_ERROR_BODY };
        let mut body = Vec::new();
        if call.method != "HEAD" {
            let reader = resp.into_body().into_reader();
            if let Err(e) = reader.take(limit).read_to_end(&mut body) {
                let kind = if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock
                {
                    TransportKind::Timeout
                } else {
                    TransportKind::Io
                };
                return (
                    Err(S3ErrorKind::Transport {
                        kind,
                        message: format!("reading the answer failed: {e}"),
                    }),
                    None,
                );
            }
        }
        let resp = Resp {
            status,
            headers,
            body,
        };
        let text = String::from_utf8_lossy(&resp.body);
        // CompleteMultipartUpload (and CopyObject) can answer 200 with an <Error> body.
        let error_in_200 = ok && call.op == "CompleteMultipartUpload" && text.contains("<Error>");
        if ok && !error_in_200 {
            return (Ok(resp), None);
        }
        let retry_after = resp
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let (mut code, message) = (xml::text(&text, "Code"), xml::text(&text, "Message"));
        if code.is_none() {
            code = match status {
                403 => Some("AccessDenied".to_string()),
                404 if call.key.is_none() => Some("NoSuchBucket".to_string()),
                _ => None,
            };
        }
        let status = if error_in_200 && code.as_deref() == Some("InternalError") {
            500
        } else {
            status
        };
        (
            Err(S3ErrorKind::Status {
                status,
                code,
                message,
            }),
            retry_after,
        )
    }
}

/// Whether rustls refused the server's certificate somewhere in this source chain.
/// An `io::Error`'s `source()` skips the error it wraps, so look inside those too.
fn untrusted_certificate(mut e: Option<&(dyn std::error::Error + 'static)>) -> bool {
    while let Some(err) = e {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            if matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            ) {
                return true;
            }
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if untrusted_certificate(Some(inner as &(dyn std::error::Error + 'static))) {
                return true;
            }
        }
        e = err.source();
    }
    false
}

/// ureq's resolver, whose failures say that they are the host's name not resolving:
/// `getaddrinfo`'s error is a plain `io::Error` that would read as a broken connection.
#[derive(Debug, Default)]
struct Resolver(ureq::unversioned::resolver::DefaultResolver);

/// A host name that did not resolve (the system resolver's own error inside).
#[derive(Debug)]
struct NameNotResolved(std::io::Error);

impl fmt::Display for NameNotResolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NameNotResolved {}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        self.0.resolve(uri, config, timeout).map_err(|e| match e {
            ureq::Error::Io(io) => ureq::Error::Other(Box::new(NameNotResolved(io))),
            e => e,
        })
    }
}

/// Classify a ureq error (every one it returns is a transport failure: statuses come
/// back as responses) and phrase it, without the URL: the caller names the endpoint.
fn transport_kind(t: &ureq::Error) -> S3ErrorKind {
    // ureq's error has no source(): start from the error it carries, if any.
    let inner: Option<&(dyn std::error::Error + 'static)> = match t {
        ureq::Error::Io(e) => Some(e),
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Other(e) => Some(e.as_ref()),
        _ => None,
    };
    let mut chain = match inner {
        Some(e) => e.to_string(),
        None => t.to_string(),
    };
    let mut timeout = matches!(t, ureq::Error::Timeout(_));
    let mut refused = false;
    let mut src = inner;
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            timeout |= matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        // ureq wraps an io::Error in one that displays the same text: say it once.
        let text = format!(": {e}");
        if !chain.contains(&text[2..]) {
            chain.push_str(&text);
        }
        src = e.source();
    }
    let tls = untrusted_certificate(inner);
    let kind = match t {
        _ if tls => TransportKind::Tls,
        _ if timeout => TransportKind::Timeout,
        ureq::Error::HostNotFound => TransportKind::Dns,
        ureq::Error::Other(e) if e.is::<NameNotResolved>() => TransportKind::Dns,
        ureq::Error::ConnectionFailed => TransportKind::Connect,
        _ if refused => TransportKind::Connect,
        ureq::Error::Io(_) => TransportKind::Io,
        _ => TransportKind::Other,
    };
    let what = match kind {
        TransportKind::Tls => "the server's TLS certificate is not trusted",
        TransportKind::Timeout => "timed out",
        TransportKind::Dns => "cannot resolve the host",
        TransportKind::Connect => "cannot connect",
        TransportKind::Io => "the connection failed",
        TransportKind::Other => "request failed",
    };
    let detail = chain.trim_start_matches(": ");
    let detail = if refused && !detail.to_ascii_lowercase().contains("connection refused") {
        format!("connection refused: {detail}")
    } else {
        detail.to_string()
    };
    let message = if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    };
    S3ErrorKind::Transport { kind, message }
}

/// The part size for a stream of about `expected_len` bytes: at least `min_part`
/// (and S3's 5 MiB), grown in whole MiB so the stream fits in 10,000 parts.
pub fn part_size_for(expected_len: u64, min_part: usize) -> usize {
    const MIB: u64 = 1024 * 1024;
    let min = (min_part as u64).max(MIN_PART_SIZE);
    let needed = expected_len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(min).min(MAX_PART_SIZE) as usize
}

/// What [`StreamingUpload::on_create`] calls: `f(key, upload_id)`.
pub type OnCreate = Box<dyn FnMut(&str, &str) + Send>;

/// Streams one object of unknown length with bounded memory: buffers up to part_size;
/// if the stream ends before the buffer fills, a single PutObject; otherwise a multipart
/// upload whose parts are all exactly part_size except the last (Cloudflare R2 needs that),
/// growing part_size up front from `expected_len` so there are never more than 10,000 parts.
/// Any error, or dropping it unfinished, aborts the multipart upload (no orphans).
/// The key should be this upload's own (narpush adds a random part): a completion
/// whose answer was lost is recognised by an object of exactly the streamed size.
pub struct StreamingUpload {
    client: Client,
    key: String,
    content_type: &'static str,
    part_size: usize,
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<(u32, String)>,
    /// The number of the last part handed to the sender.
    next_part: u32,
    total: u64,
    failed: Option<S3Error>,
    finished: bool,
    /// Called with the key and upload id right after CreateMultipartUpload.
    on_create: Option<OnCreate>,
    /// The threads that upload full parts while the next one fills, so compressing
    /// and sending overlap (memory: the parts in flight and the one filling).
    sender: Option<PartSender>,
    /// How many parts may be in flight at once ([`parts_in_flight`]).
    in_flight: usize,
}

/// Memory for one upload's parts (those in flight and the one filling): with the at
/// most four large NARs a push sends at once, 64 MiB in all.
const PART_MEMORY: usize = 16 << 20;

/// Parts in flight at once for `part_size`: as many as fit in [`PART_MEMORY`] beside
/// the one filling, at least one. Over a slow link they go up side by side; when the
/// compressor is the slower side, there is only ever one to send anyway.
pub fn parts_in_flight(part_size: usize) -> usize {
    (PART_MEMORY / part_size.max(1)).saturating_sub(1).max(1)
}

type PartResult = Result<Vec<(u32, String)>, S3Error>;

/// Threads taking full parts from a rendezvous channel (a part is handed over only
/// when a thread is free) and uploading them; after a failure the others stop taking
/// parts, so the writer learns of it at its next part.
struct PartSender {
    tx: std::sync::mpsc::SyncSender<(u32, Vec<u8>)>,
    handles: Vec<std::thread::JoinHandle<PartResult>>,
}

impl PartSender {
    fn start(client: Client, key: String, upload_id: String, threads: usize) -> PartSender {
        use std::sync::atomic::AtomicBool;
        use std::sync::Mutex;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, Vec<u8>)>(0);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let handles = (0..threads.max(1))
            .map(|_| {
                let (client, key, id) = (client.clone(), key.clone(), upload_id.clone());
                let (rx, failed) = (rx.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut parts = Vec::new();
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((n, body)) = next else { break };
                        if failed.load(Ordering::SeqCst) {
                            break;
                        }
                        match client.upload_part(&key, &id, n, &body) {
                            Ok(etag) => parts.push((n, etag)),
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                    Ok(parts)
                })
            })
            .collect();
        PartSender { tx, handles }
    }

    /// Wait for the parts sent so far; their numbers and ETags in order, or the first
    /// error.
    fn join(self) -> PartResult {
        drop(self.tx);
        let mut parts = Vec::new();
        let mut first_error = None;
        for h in self.handles {
            match h
                .join()
                .unwrap_or_else(|_| panic!("part upload thread panicked"))
            {
                Ok(p) => parts.extend(p),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                parts.sort_by_key(|(n, _)| *n);
                Ok(parts)
            }
        }
    }
}

impl StreamingUpload {
    pub fn new(
        client: &Client,
        key: String,
        content_type: &'static str,
        part_size: usize,
        expected_len: u64,
    ) -> StreamingUpload {
        let part_size = part_size_for(expected_len, part_size);
        StreamingUpload {
            client: client.clone(),
            key,
            content_type,
            part_size,
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            next_part: 0,
            total: 0,
            failed: None,
            finished: false,
            on_create: None,
            sender: None,
            in_flight: parts_in_flight(part_size),
        }
    }

    /// Call `f(key, upload_id)` once the multipart upload is created (to journal it).
    pub fn on_create(&mut self, f: OnCreate) {
        self.on_create = Some(f);
    }

    /// The part size in use.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Upload what is buffered and complete; returns the object's size.
    pub fn finish(self) -> Result<u64, S3Error> {
        let (total, key) = (self.total, self.key.clone());
        self.finish_as(&key).map(|_| total)
    }

    /// Like [`finish`](Self::finish), but a stream that fit in one part is put under
    /// `single_key` (a name that could only be known at the end, such as the hash of
    /// the content); returns the key the object has.
    pub fn finish_as(mut self, single_key: &str) -> Result<String, S3Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let key = if self.upload_id.is_some() {
            self.key.clone()
        } else {
            single_key.to_string()
        };
        let result = match self.upload_id.clone() {
            None => self.client.put_object(&key, &self.buf, self.content_type),
            Some(id) => {
                let r = if self.buf.is_empty() {
                    Ok(())
                } else {
                    self.upload_buffered()
                };
                r.and_then(|()| self.wait_for_parts()).and_then(|()| {
                    let done = self.client.complete_multipart_upload_of(
                        &self.key,
                        &id,
                        &self.parts,
                        self.total,
                    );
                    match done {
                        // An attempt whose answer was lost (a timeout while the server
                        // assembled the object) may have completed it: a retry then
                        // finds no such upload. The key is this upload's own, so an
                        // object of exactly our size under it is ours.
                        Err(_)
                            if self.client.head_object(&self.key).ok().flatten()
                                == Some(self.total) =>
                        {
                            Ok(())
                        }
                        other => other,
                    }
                })
            }
        };
        match result {
            Ok(()) => {
                self.finished = true;
                Ok(key)
            }
            Err(e) => {
                self.abort_quietly();
                Err(e)
            }
        }
    }

    /// Give up, aborting any multipart upload.
    pub fn abort(mut self) {
        self.abort_quietly();
    }

    fn abort_quietly(&mut self) {
        self.finished = true;
        if let Some(sender) = self.sender.take() {
            // Let a part in flight end before the abort, or it could outlive it.
            let _ = sender.join();
        }
        if let Some(id) = self.upload_id.take() {
            // Best effort: the upload failed already; its error is the one to report.
            let _ = self.client.abort_multipart_upload(&self.key, &id);
        }
    }

    /// Wait until every part handed over so far is uploaded (their ETags are then in
    /// `parts`); the first failure among them is the error.
    fn wait_for_parts(&mut self) -> Result<(), S3Error> {
        if let Some(sender) = self.sender.take() {
            let done = sender.join()?;
            self.parts.extend(done);
        }
        Ok(())
    }

    fn upload_buffered(&mut self) -> Result<(), S3Error> {
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .client
                    .create_multipart_upload(&self.key, self.content_type)?;
                self.upload_id = Some(id.clone());
                if let Some(f) = &mut self.on_create {
                    f(&self.key, &id);
                }
                id
            }
        };
        self.next_part += 1;
        let n = self.next_part;
        if u64::from(n) > MAX_PARTS {
            return Err(S3ErrorInfo {
                kind: S3ErrorKind::Local(format!(
                    "the stream needs more than {MAX_PARTS} parts of {} bytes; the expected length given was too small",
                    self.part_size
                )),
                ..self.client.error_for("UploadPart", Some(&self.key))
            }
            .into());
        }
        let threads = self.in_flight;
        let sender = self.sender.get_or_insert_with(|| {
            PartSender::start(self.client.clone(), self.key.clone(), id.clone(), threads)
        });
        let body = std::mem::take(&mut self.buf);
        if sender.tx.send((n, body)).is_err() {
            // The thread stopped at a failed part: that failure is the error.
            let failed = self.sender.take().map(PartSender::join);
            return Err(match failed {
                Some(Err(e)) => e,
                _ => S3ErrorInfo {
                    kind: S3ErrorKind::Local("the part upload thread stopped".into()),
                    ..self.client.error_for("UploadPart", Some(&self.key))
                }
                .into(),
            });
        }
        Ok(())
    }
}

impl std::io::Write for StreamingUpload {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sent only once more data arrives, so a stream of exactly
        // one part is a single PutObject.
        if self.buf.len() == self.part_size {
            if let Err(e) = self.upload_buffered() {
                self.abort_quietly();
                self.failed = Some(e.clone());
                return Err(std::io::Error::other(e));
            }
        }
        let n = data.len().min(self.part_size - self.buf.len());
        // Grow by doubling but never past one part, so memory stays at part_size.
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let target = (self.buf.capacity() * 2)
                .max(need)
                .max(64 * 1024)
                .min(self.part_size);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        Ok(n)
    }

    /// Waits for the parts already handed to the upload thread (the part still
    /// filling stays buffered: S3 parts are all one size).
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        if let Err(e) = self.wait_for_parts() {
            self.abort_quietly();
            self.failed = Some(e.clone());
            return Err(std::io::Error::other(e));
        }
        Ok(())
    }
}

impl Drop for StreamingUpload {
    fn drop(&mut self) {
        if !self.finished {
            self.abort_quietly();
        }
    }
}

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    /// Unix seconds (`i64::MAX` when the server gave none: never old).
    pub last_modified: i64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_time(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let ok = (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..=60).contains(&s);
    ok.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// `2026-12-03T07:57:44.000Z` (ListObjectsV2's LastModified) to Unix seconds.
pub fn parse_iso8601(t: &str) -> Option<i64> {
    let t = t.trim();
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    if t.len() < 19 || &t[4..5] != "-" || &t[7..8] != "-" || &t[13..14] != ":" {
        return None;
    }
    unix_time(
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    )
}

/// `Thu, 03 Dec 2026 07:57:44 GMT` (an HTTP date, as in Last-Modified) to Unix seconds.
pub fn parse_http_date(t: &str) -> Option<i64> {
    let mut w = t.split_whitespace().skip(1);
    let d = w.next()?.parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = w.next()?;
    let mo = months.iter().position(|m| m.eq_ignore_ascii_case(mon))? as i64 + 1;
    let y = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    unix_time(y, mo, d, h, mi, s)
}

/// Just enough XML for S3's answers: the text of the first `<Tag>…</Tag>` and the
/// bodies of repeated blocks, with the five predefined entities decoded.
mod xml {
    pub fn blocks<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find(&open) {
            let after = &rest[i + open.len()..];
            let Some(j) = after.find(&close) else { break };
            out.push(&after[..j]);
            rest = &after[j + close.len()..];
        }
        out
    }

    pub fn text(s: &str, tag: &str) -> Option<String> {
        blocks(s, tag).first().map(|t| unescape(t))
    }

    pub fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&#34;", "\"")
            .replace("&amp;", "&")
    }

    pub fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;")
    }
}

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
    }

    #[test]
    fn what_is_transient() {
        for k in [
            status(500, "InternalError"),
            status(503, "SlowDown"),
            status(429, "TooMany"),
            status(400, "RequestTimeout"),
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
    fn tls_failures_are_the_rustls_certificate_error_not_text() {
        use std::io::{Error as IoError, ErrorKind};
        let kind = |e: IoError| match transport_kind(&ureq::Error::Io(e)) {
            S3ErrorKind::Transport { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        let cert = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            kind(IoError::new(ErrorKind::InvalidData, cert())),
            TransportKind::Tls
        );
        // ureq wraps the stream's io::Error in one of its own.
        let nested = IoError::other(IoError::new(ErrorKind::InvalidData, cert()));
        assert_eq!(kind(nested), TransportKind::Tls);
        // A TLS failure that is not about the certificate, and words that merely
        // mention one, are not an untrusted certificate.
        let corrupt = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            kind(IoError::new(ErrorKind::InvalidData, corrupt)),
            TransportKind::Io
        );
        let words = IoError::other("resolve dns name 'certificate.example.com:443'");
        assert_eq!(kind(words), TransportKind::Io);
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(1, 0.5), Duration::from_millis(100));
        assert_eq!(
            p.backoff(3, 0.999_999),
            Duration::from_millis(800).mul_f64(0.999_999)
        );
        assert_eq!(p.backoff(10, 1.0), Duration::from_secs(5));
        assert_eq!(p.backoff(100, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn part_sizes() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(part_size_for(0, 0), 5 * MIB);
        assert_eq!(part_size_for(1 << 30, 8 * MIB), 8 * MIB);
        // 100 GiB / 10,000 = 10.24 MiB -> 11 MiB.
        assert_eq!(part_size_for(100 << 30, 5 * MIB), 11 * MIB);
        assert!(((100u64 << 30).div_ceil(part_size_for(100 << 30, 5 * MIB) as u64)) <= MAX_PARTS);
        assert_eq!(part_size_for(u64::MAX, 5 * MIB), 5 << 30);
    }

    #[test]
    fn dates() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_iso8601("2026-12-03T07:57:44.000Z"),
            Some(1_796_284_664)
        );
        assert_eq!(parse_iso8601("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 07:57:44 GMT"),
            Some(1_796_284_664)
        );
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_http_date("Thu, 03 Foo 2026 07:57:44 GMT"), None);
    }

    #[test]
    fn xml_bits() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>a &amp; b &lt;c&gt;</Message>\
                    <KeyMarker>x</KeyMarker><Key>k</Key></Error>";
        assert_eq!(xml::text(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(xml::text(body, "Message").as_deref(), Some("a & b <c>"));
        assert_eq!(xml::text(body, "Key").as_deref(), Some("k"));
        let list = "<Contents><Key>a</Key><Size>1</Size></Contents><Contents><Key>b</Key><Size>2</Size></Contents>";
        assert_eq!(xml::blocks(list, "Contents").len(), 2);
        assert_eq!(xml::escape("\"e&t\""), "&quot;e&amp;t&quot;");
    }

    fn client(path_style: bool, port: u16) -> Client {
        Client::new(S3Config {
            endpoint: Endpoint {
                scheme: crate::store_url::Scheme::Http,
                host: "s3.example".into(),
                port,
            },
            bucket: "nix-cache".into(),
            region: "us-east-1".into(),
            path_style,
            credentials: Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "SECRET".into(),
                session_token: None,
            },
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            storage_class: None,
            trust_file: None,
        })
        .unwrap()
    }

    #[test]
    fn addressing_styles() {
        let c = client(true, 9000);
        assert_eq!(
            c.target(Some("nar/a b.nar")),
            ("s3.example:9000".into(), "/nix-cache/nar/a b.nar".into())
        );
        assert_eq!(
            c.target(None),
            ("s3.example:9000".into(), "/nix-cache".into())
        );
        let c = client(false, 80);
        assert_eq!(
            c.target(Some("x.narinfo")),
            ("nix-cache.s3.example".into(), "/x.narinfo".into())
        );
        assert_eq!(c.target(None), ("nix-cache.s3.example".into(), "/".into()));
        assert_eq!(c.describe(), "bucket 'nix-cache' at http://s3.example");
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn client_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Client>();
        fn assert_send<T: Send>() {}
        assert_send::<StreamingUpload>();
        assert_send_sync::<S3Error>();
    }

    #[test]
    fn io_error_round_trip() {
        let e = err(status(500, "InternalError"));
        let io = std::io::Error::other(e.clone());
        assert_eq!(S3Error::from_io(io).unwrap(), e);
        assert!(S3Error::from_io(std::io::Error::other("x")).is_err());
    }
}
