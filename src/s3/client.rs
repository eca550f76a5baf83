//! The S3 client: one ureq `Agent` with pooled connections for one bucket, and the
//! operations narpush needs: objects (HEAD, GET, ranged GET, PUT, batch DELETE,
//! ListObjectsV2), multipart uploads (create, part, complete, abort, list) and the
//! bucket settings `init` writes. Every request is signed with SigV4 over its whole
//! body and sent with a Content-Length (never chunked). Failures keep S3's XML error
//! (`<Code>`, `<Message>`) with the operation, key, bucket and endpoint
//! ([`S3Error`]); transient ones are retried with capped exponential backoff and full
//! jitter inside a total time budget. Credentials and signatures never appear in an
//! error or a log line: errors carry the operation, key, bucket, endpoint and S3's
//! answer, never a request's headers.

use super::error::{S3Error, S3ErrorInfo, S3ErrorKind, TransportKind};
use super::xml::{self, parse_http_date, parse_iso8601};
use super::{sigv4, tls, Credentials, Endpoint, Scheme};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    pub fn new(cfg: S3Config) -> Result<Client, tls::TrustError> {
        let tls = match cfg.endpoint.scheme {
            Scheme::Https => ureq::tls::TlsConfig::builder()
                .root_certs(tls::root_certs_with(cfg.trust_file.as_deref())?)
                .build(),
            Scheme::Http => ureq::tls::TlsConfig::default(),
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
        self.list_objects_pages::<S3Error>(prefix, &mut |page| {
            out.extend(page.into_iter().map(|o| (o.key, o.size)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every object under `prefix`, one page (up to 1000) at a time, so a listing of
    /// any size needs one page of memory; `page` may stop the listing with an error.
    pub fn list_objects_pages<E: From<S3Error>>(
        &self,
        prefix: &str,
        page: &mut dyn FnMut(Vec<ObjectEntry>) -> Result<(), E>,
    ) -> Result<(), E> {
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
        for batch in keys.chunks(1000) {
            let mut body = String::from(
                "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>",
            );
            for k in batch {
                body.push_str(&format!("<Object><Key>{}</Key></Object>", xml::escape(k)));
            }
            body.push_str("</Delete>");
            let md5 = content_md5(&body);
            let call = Call {
                op: "DeleteObjects",
                key: None,
                method: "POST",
                query: &[("delete", "")],
                headers: &xml_headers(&md5),
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
        let md5 = content_md5(config_xml);
        let call = Call {
            op: "PutBucketLifecycleConfiguration",
            key: None,
            method: "PUT",
            query: &[("lifecycle", "")],
            headers: &xml_headers(&md5),
            body: config_xml.as_bytes(),
            patience: None,
        };
        self.execute(&call).map(drop)
    }

    fn error_base(&self, call: &Call<'_>) -> S3ErrorInfo {
        self.error_for(call.op, call.key)
    }

    pub(super) fn error_for(&self, operation: &'static str, key: Option<&str>) -> S3ErrorInfo {
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
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok());
            let wait = call.patience.unwrap_or(cfg.io_timeout);
            // A body of unknown length (chunked) is given the time of the largest
            // one narpush reads whole: an error body, or a listing page.
            let deadline = Instant::now()
                + body_deadline(wait, length.unwrap_or(limit.min(UNKNOWN_BODY_BUDGET)));
            let reader = resp.into_body().into_reader();
            if let Err(e) = read_until(reader.take(limit), &mut body, deadline) {
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

/// The slowest average rate an answer's body may arrive at, after the first
/// `io-timeout`: a server that trickles a byte now and then never trips a per-read
/// timeout, so the whole body gets a deadline too.
const MIN_BODY_RATE: u64 = 32 * 1024;

/// The size a body without a Content-Length is given time for: more than a page of
/// 1,000 listed keys, far less than a NAR (whose ranges always come with a length).
const UNKNOWN_BODY_BUDGET: u64 = 4 << 20;

/// How long a body of `len` bytes (or at most `len`, when the server did not say)
/// may take to arrive: `wait` plus `len` at [`MIN_BODY_RATE`].
fn body_deadline(wait: Duration, len: u64) -> Duration {
    let len = len.min(1 << 40);
    wait + Duration::from_millis(len.saturating_mul(1000) / MIN_BODY_RATE)
}

/// `read_to_end` that fails with `TimedOut` once `deadline` has passed (checked
/// after every read, so it is late by at most one per-read timeout).
fn read_until(mut r: impl Read, out: &mut Vec<u8>, deadline: Instant) -> std::io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the body arrived slower than {} KiB/s",
                    MIN_BODY_RATE / 1024
                ),
            ));
        }
    }
}

/// Base64 MD5 of an XML body, for the Content-MD5 header that S3 requires on
/// DeleteObjects and PutBucketLifecycleConfiguration (without it, or a checksum
/// header that Garage rejects, AWS refuses them).
fn content_md5(body: &str) -> String {
    use md5::Digest;
    crate::encoding::base64_encode(&md5::Md5::digest(body.as_bytes()))
}

/// The headers of an XML request body with its Content-MD5.
fn xml_headers(md5: &str) -> [(&'static str, &str); 2] {
    [("content-type", "application/xml"), ("content-md5", md5)]
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

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    /// Unix seconds (`i64::MAX` when the server gave none: never old).
    pub last_modified: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::StreamingUpload;

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
    fn a_body_gets_the_io_timeout_plus_its_length_at_the_slowest_rate() {
        let wait = Duration::from_secs(30);
        assert_eq!(body_deadline(wait, 0), wait);
        assert_eq!(
            body_deadline(wait, 32 * 1024),
            wait + Duration::from_secs(1)
        );
        // An 8 MiB range (verify) may take 256 s more; no length overflows.
        assert_eq!(
            body_deadline(wait, 8 << 20),
            wait + Duration::from_secs(256)
        );
        assert!(body_deadline(wait, u64::MAX) > Duration::from_secs(1 << 20));
    }

    #[test]
    fn reading_past_the_deadline_times_out_but_a_finished_body_does_not() {
        let mut out = Vec::new();
        let past = Instant::now() - Duration::from_secs(1);
        let e = read_until(&b"abc"[..], &mut out, past).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let mut out = Vec::new();
        read_until(&b""[..], &mut out, past).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        read_until(&b"abc"[..], &mut out, later).unwrap();
        assert_eq!(out, b"abc");
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

    fn client(path_style: bool, port: u16) -> Client {
        Client::new(S3Config {
            endpoint: Endpoint {
                scheme: Scheme::Http,
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
}
