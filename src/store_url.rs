//! Binary-cache store URLs in Nix's syntax: `file:///abs/dir[?…]` and
//! `s3://BUCKET?endpoint=…&…`, parsed and validated into [`StoreUrl`]. Parameters
//! follow Nix (2.8 and current; see the reference's §7); an unknown one is an error
//! that lists the known ones. Values are percent-decoded. Pure: the only outside
//! input, the default region, is an argument.
//!
//! Four network knobs are narpush's own, for slow or flaky links (and for tests):
//! `connect-timeout` and `io-timeout` in whole seconds (defaults 10 and 30),
//! `idle-timeout` (default 60; a connection idle longer is not reused, 0: never
//! reuse one), and `retry-attempts`, the attempts one S3 request gets in all, the first included
//! (default 5; `1` means no retry), as Nix's `download-attempts` counts them.
//!
//! `multipart-upload` is accepted for compatibility but changes nothing: narpush
//! always streams a NAR larger than one part as a multipart upload (so memory stays
//! bounded), whatever the flag says.

use crate::error::Error;
use crate::s3::{
    validate_bucket, Credentials, Endpoint, RetryPolicy, S3Config, Scheme, MAX_PART_SIZE,
    MIN_PART_SIZE,
};
use std::path::PathBuf;
use std::time::Duration;

/// Default part size, as Nix's `buffer-size` default.
pub const DEFAULT_PART_SIZE: u64 = MIN_PART_SIZE;
/// Default `connect-timeout`, seconds.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// Default `io-timeout` (one read or write on the socket), seconds.
pub const DEFAULT_IO_TIMEOUT: u64 = 30;
/// Default `idle-timeout`, seconds: how long an idle connection stays reusable. About
/// a minute, as Nix's S3 store learned on Hydra: servers and NAT boxes drop idle
/// connections silently after a while, and a request on a dead one costs a timeout.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 60;
/// Default `retry-attempts` (attempts in all).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 5;
/// Default `multipart-threshold` (Nix HEAD): 100 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 100 * 1024 * 1024;

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    File { dir: PathBuf, params: CacheParams },
    S3(S3Url),
}

/// Parameters every binary cache store has.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CacheParams {
    /// `compression` (e.g. `zstd`, `xz`, `none`); validated by the compressor.
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    /// `secret-key` and `secret-keys` (paths).
    pub secret_keys: Vec<PathBuf>,
    pub priority: Option<u32>,
    pub want_mass_query: Option<bool>,
    pub parallel_compression: Option<bool>,
}

/// `addressing-style`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressingStyle {
    Auto,
    Path,
    Virtual,
}

/// An `s3://` store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// The endpoint; for AWS (no `endpoint=`) `s3.REGION.amazonaws.com` over https.
    pub endpoint: Endpoint,
    /// True when `endpoint=` was given.
    pub custom_endpoint: bool,
    pub region: String,
    pub profile: Option<String>,
    pub addressing_style: AddressingStyle,
    /// `multipart-upload` as given (accepted; see the module docs).
    pub multipart_upload: Option<bool>,
    /// `multipart-chunk-size` / `buffer-size`: the part size in bytes.
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub storage_class: Option<String>,
    /// `connect-timeout`, seconds.
    pub connect_timeout: u64,
    /// `io-timeout`, seconds.
    pub io_timeout: u64,
    /// `idle-timeout`, seconds: a connection idle longer is not reused (0: no reuse).
    pub idle_timeout: u64,
    /// `retry-attempts`: attempts per request in all.
    pub retry_attempts: u32,
    pub cache: CacheParams,
    /// The URL as given, for messages.
    pub original: String,
}

impl S3Url {
    /// The S3 client configuration for this bucket, signing with `creds`.
    pub fn client_config(&self, creds: Credentials) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            path_style: self.path_style(),
            credentials: creds,
            retry: RetryPolicy {
                max_attempts: self.retry_attempts,
                ..RetryPolicy::default()
            },
            connect_timeout: Duration::from_secs(self.connect_timeout),
            io_timeout: Duration::from_secs(self.io_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            storage_class: self.storage_class.clone(),
            trust_file: None,
        }
    }

    /// Path style (`host/bucket/key`) rather than virtual-hosted (`bucket.host/key`).
    pub fn path_style(&self) -> bool {
        match self.addressing_style {
            AddressingStyle::Path => true,
            AddressingStyle::Virtual => false,
            AddressingStyle::Auto => self.custom_endpoint || self.bucket.contains('.'),
        }
    }
}

const CACHE_PARAMS: &[&str] = &[
    "compression",
    "compression-level",
    "secret-key",
    "secret-keys",
    "priority",
    "want-mass-query",
    "parallel-compression",
    "write-nar-listing",
];
const S3_PARAMS: &[&str] = &[
    "endpoint",
    "scheme",
    "region",
    "aws-region",
    "profile",
    "addressing-style",
    "multipart-upload",
    "multipart-chunk-size",
    "buffer-size",
    "multipart-threshold",
    "storage-class",
    "connect-timeout",
    "io-timeout",
    "idle-timeout",
    "retry-attempts",
];

impl StoreUrl {
    /// Parse a store URL. `default_region` is `AWS_REGION` when set (the caller reads
    /// the environment), used when the URL has no `region=`.
    pub fn parse(url: &str, default_region: Option<&str>) -> Result<StoreUrl, Error> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::Usage(format!(
                "store URL '{url}' has no scheme; narpush writes to file:///DIR or s3://BUCKET"
            ))
        })?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, q),
            None => (rest, ""),
        };
        let params = parse_query(query, url)?;
        match scheme {
            "file" => parse_file(main, &params, url),
            "s3" => parse_s3(main, &params, url, default_region).map(StoreUrl::S3),
            "http" | "https" => Err(Error::Usage(format!(
                "store URL '{url}': narpush cannot write to an {scheme}:// binary cache; \
                 give the bucket behind it as s3://BUCKET?endpoint=… or a directory as file:///DIR"
            ))),
            _ => Err(Error::Usage(format!(
                "store URL '{url}': unsupported scheme '{scheme}'; narpush writes to file:///DIR or s3://BUCKET"
            ))),
        }
    }
}

fn parse_query(query: &str, url: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, url)?;
        let v = percent_decode(v, url)?;
        if out.iter().any(|(ok, _)| *ok == k) {
            return Err(Error::Usage(format!(
                "parameter '{k}' given twice in store URL '{url}'"
            )));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `%XX` decoding (`+` stays `+`), into UTF-8.
pub fn percent_decode(s: &str, url: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Usage(format!("store URL '{url}': bad percent-escape in '{s}'"))
                })?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        Error::Usage(format!(
            "store URL '{url}': '{s}' is not UTF-8 once decoded"
        ))
    })
}

fn unknown(k: &str, url: &str, s3: bool) -> Error {
    let mut known: Vec<&str> = CACHE_PARAMS.to_vec();
    if s3 {
        known.extend_from_slice(S3_PARAMS);
    }
    known.sort_unstable();
    Error::Usage(format!(
        "unknown parameter '{k}' in store URL '{url}'; known: {}",
        known.join(", ")
    ))
}

fn parse_bool(k: &str, v: &str, url: &str) -> Result<bool, Error> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Error::Usage(format!(
            "store URL '{url}': {k}={v} is not a boolean (true/false or 1/0)"
        ))),
    }
}

fn parse_num<T: std::str::FromStr>(k: &str, v: &str, url: &str) -> Result<T, Error> {
    v.parse()
        .map_err(|_| Error::Usage(format!("store URL '{url}': {k}={v} is not a number")))
}

/// Apply one cache parameter; `Ok(false)` if `k` is not one.
fn cache_param(c: &mut CacheParams, k: &str, v: &str, url: &str) -> Result<bool, Error> {
    match k {
        "compression" => c.compression = Some(v.to_string()),
        "compression-level" => c.compression_level = Some(parse_num(k, v, url)?),
        "secret-key" => {
            if !v.is_empty() {
                c.secret_keys.push(PathBuf::from(v));
            }
        }
        "secret-keys" => c
            .secret_keys
            .extend(v.split(',').filter(|p| !p.is_empty()).map(PathBuf::from)),
        "priority" => c.priority = Some(parse_num(k, v, url)?),
        "want-mass-query" => c.want_mass_query = Some(parse_bool(k, v, url)?),
        "parallel-compression" => c.parallel_compression = Some(parse_bool(k, v, url)?),
        "write-nar-listing" => {
            if parse_bool(k, v, url)? {
                return Err(Error::Usage(format!(
                    "store URL '{url}': write-nar-listing=1 is not supported yet; drop it or set it to 0"
                )));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_file(main: &str, params: &[(String, String)], url: &str) -> Result<StoreUrl, Error> {
    let dir = percent_decode(main, url)?;
    if !dir.starts_with('/') {
        return Err(Error::Usage(format!(
            "store URL '{url}': a file:// store needs an absolute path, as in file:///var/cache/nix"
        )));
    }
    let mut cache = CacheParams::default();
    for (k, v) in params {
        if !cache_param(&mut cache, k, v, url)? {
            return Err(unknown(k, url, false));
        }
    }
    Ok(StoreUrl::File {
        dir: PathBuf::from(dir),
        params: cache,
    })
}

fn parse_endpoint(v: &str, scheme_param: Option<Scheme>, url: &str) -> Result<Endpoint, Error> {
    let bad = |why: &str| Error::Usage(format!("store URL '{url}': endpoint '{v}' {why}"));
    let (scheme, rest) = if let Some(r) = v.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = v.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if v.contains("://") {
        return Err(bad("must use http:// or https://"));
    } else {
        (scheme_param.unwrap_or(Scheme::Https), v)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad(
            "must be host[:port] or http(s)://host[:port], without a path",
        ));
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        // [IPv6]:port
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("has no host"));
    }
    let port = match port {
        None => scheme.default_port(),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad("has a port that is not a number from 1 to 65535")),
        },
    };
    Ok(Endpoint {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_s3(
    main: &str,
    params: &[(String, String)],
    url: &str,
    default_region: Option<&str>,
) -> Result<S3Url, Error> {
    let bucket = main.strip_suffix('/').unwrap_or(main);
    if bucket.is_empty() {
        return Err(Error::Usage(format!(
            "store URL '{url}' names no bucket; use s3://BUCKET"
        )));
    }
    if bucket.contains('/') {
        return Err(Error::Usage(format!(
            "store URL '{url}': a key prefix after the bucket is not supported; use s3://BUCKET"
        )));
    }
    validate_bucket(bucket).map_err(|m| Error::Usage(format!("store URL '{url}': {m}")))?;

    let mut cache = CacheParams::default();
    let (mut endpoint, mut scheme, mut region, mut profile) = (None, None, None, None);
    let mut style = AddressingStyle::Auto;
    let mut multipart_upload = None;
    let mut part_size = DEFAULT_PART_SIZE;
    let mut threshold = DEFAULT_MULTIPART_THRESHOLD;
    let mut storage_class = None;
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut io_timeout = DEFAULT_IO_TIMEOUT;
    let mut idle_timeout = DEFAULT_IDLE_TIMEOUT;
    let mut retry_attempts = DEFAULT_RETRY_ATTEMPTS;
    let ranged_from = |min: u64, k: &str, v: &str, max: u64| -> Result<u64, Error> {
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(Error::Usage(format!(
                "store URL '{url}': {k}={v} is not a whole number from {min} to {max}"
            ))),
        }
    };
    let ranged = |k: &str, v: &str, max: u64| ranged_from(1, k, v, max);
    for (k, v) in params {
        let k = k.as_str();
        match k {
            "endpoint" => endpoint = Some(v.clone()),
            "scheme" => {
                scheme = Some(match v.as_str() {
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    _ => {
                        return Err(Error::Usage(format!(
                            "store URL '{url}': scheme={v} is not http or https"
                        )))
                    }
                })
            }
            "region" | "aws-region" => {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(Error::Usage(format!(
                        "store URL '{url}': region '{v}' is not a region name"
                    )));
                }
                region = Some(v.clone())
            }
            "profile" => profile = Some(v.clone()).filter(|p| !p.is_empty()),
            "addressing-style" => {
                style = match v.as_str() {
                    "auto" => AddressingStyle::Auto,
                    "path" => AddressingStyle::Path,
                    "virtual" => AddressingStyle::Virtual,
                    _ => {
                        return Err(Error::Usage(format!(
                            "store URL '{url}': addressing-style={v} is not auto, path or virtual"
                        )))
                    }
                }
            }
            "multipart-upload" => multipart_upload = Some(parse_bool(k, v, url)?),
            "multipart-chunk-size" | "buffer-size" => {
                part_size = parse_num(k, v, url)?;
                if part_size < MIN_PART_SIZE {
                    return Err(Error::Usage(format!(
                        "store URL '{url}': {k}={v} is below S3's minimum part size of {MIN_PART_SIZE} bytes (5 MiB)"
                    )));
                }
                if part_size > MAX_PART_SIZE {
                    return Err(Error::Usage(format!(
                        "store URL '{url}': {k}={v} is above S3's maximum part size of 5 GiB"
                    )));
                }
            }
            "multipart-threshold" => threshold = parse_num(k, v, url)?,
            "storage-class" => storage_class = Some(v.clone()).filter(|s| !s.is_empty()),
            "connect-timeout" => connect_timeout = ranged(k, v, 3600)?,
            "io-timeout" => io_timeout = ranged(k, v, 3600)?,
            "idle-timeout" => idle_timeout = ranged_from(0, k, v, 3600)?,
            "retry-attempts" => retry_attempts = ranged(k, v, 100)? as u32,
            _ => {
                if !cache_param(&mut cache, k, v, url)? {
                    return Err(unknown(k, url, true));
                }
            }
        }
    }
    let region = region
        .or_else(|| default_region.filter(|r| !r.is_empty()).map(str::to_string))
        .unwrap_or_else(|| "us-east-1".to_string());
    let (endpoint, custom) = match endpoint {
        Some(e) => (parse_endpoint(&e, scheme, url)?, true),
        None => {
            let scheme = scheme.unwrap_or(Scheme::Https);
            let host = format!("s3.{region}.amazonaws.com");
            (
                Endpoint {
                    scheme,
                    host,
                    port: scheme.default_port(),
                },
                false,
            )
        }
    };
    let out = S3Url {
        bucket: bucket.to_string(),
        endpoint,
        custom_endpoint: custom,
        region,
        profile,
        addressing_style: style,
        multipart_upload,
        part_size,
        multipart_threshold: threshold,
        storage_class,
        connect_timeout,
        io_timeout,
        idle_timeout,
        retry_attempts,
        cache,
        original: url.to_string(),
    };
    if style == AddressingStyle::Virtual
        && out.bucket.contains('.')
        && out.endpoint.scheme == Scheme::Https
    {
        return Err(Error::Usage(format!(
            "store URL '{url}': addressing-style=virtual with a dotted bucket name breaks TLS name checks; \
             use addressing-style=path"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(url: &str) -> S3Url {
        match StoreUrl::parse(url, None) {
            Ok(StoreUrl::S3(u)) => u,
            other => panic!("{url}: {other:?}"),
        }
    }
    fn err(url: &str) -> String {
        StoreUrl::parse(url, None).unwrap_err().to_string()
    }

    #[test]
    fn guide_url() {
        let u = s3("s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local");
        assert_eq!(u.bucket, "nix-cache");
        assert_eq!(u.profile.as_deref(), Some("nixbuilder"));
        assert_eq!(
            u.endpoint,
            Endpoint {
                scheme: Scheme::Https,
                host: "s3.homelab.local".into(),
                port: 443
            }
        );
        assert_eq!(u.endpoint.base_url(), "https://s3.homelab.local");
        assert_eq!(u.region, "us-east-1");
        assert!(u.path_style(), "a custom endpoint means path style");
        assert_eq!(u.part_size, 5 * 1024 * 1024);
    }

    #[test]
    fn network_knobs() {
        let u = s3("s3://bkt");
        assert_eq!(
            (u.connect_timeout, u.io_timeout, u.retry_attempts),
            (10, 30, 5)
        );
        assert_eq!(u.idle_timeout, 60);
        let u = s3("s3://bkt?connect-timeout=1&io-timeout=2&retry-attempts=1&idle-timeout=0");
        assert_eq!(
            (
                u.connect_timeout,
                u.io_timeout,
                u.retry_attempts,
                u.idle_timeout
            ),
            (1, 2, 1, 0)
        );
        for bad in [
            "connect-timeout=0",
            "io-timeout=-1",
            "io-timeout=1.5",
            "retry-attempts=0",
            "retry-attempts=101",
            "connect-timeout=+3",
            "idle-timeout=3601",
            "idle-timeout=-1",
        ] {
            let m = err(&format!("s3://bkt?{bad}"));
            assert!(m.contains(bad) && m.contains("whole number"), "{m}");
        }
        assert!(err("file:///c?io-timeout=3").contains("unknown parameter 'io-timeout'"));
    }

    #[test]
    fn endpoints_and_schemes() {
        let u = s3("s3://b-1?endpoint=127.0.0.1:9000&scheme=http");
        assert_eq!(u.endpoint.base_url(), "http://127.0.0.1:9000");
        let u = s3("s3://bkt?endpoint=https://minio.example.com:9443/&scheme=http");
        assert_eq!(
            u.endpoint.base_url(),
            "https://minio.example.com:9443",
            "the URL's scheme wins"
        );
        let u = s3("s3://bkt?endpoint=http%3A%2F%2Flocalhost%3A3900");
        assert_eq!((u.endpoint.scheme, u.endpoint.port), (Scheme::Http, 3900));
        let u = s3("s3://bkt?endpoint=http://[::1]:9000");
        assert_eq!(u.endpoint.authority(), "[::1]:9000");
        let u = s3("s3://my-bucket");
        assert_eq!(u.endpoint.base_url(), "https://s3.us-east-1.amazonaws.com");
        assert!(!u.path_style());
        let u = s3("s3://my.bucket?aws-region=eu-west-1");
        assert_eq!(u.endpoint.host, "s3.eu-west-1.amazonaws.com");
        assert!(u.path_style(), "dotted buckets use path style");
        assert!(!s3("s3://bkt?endpoint=h&addressing-style=virtual").path_style());
        assert!(s3("s3://bkt?addressing-style=path").path_style());
        assert!(err("s3://bkt?endpoint=h:99999").contains("port"));
        assert!(err("s3://bkt?endpoint=h:abc").contains("port"));
        assert!(err("s3://bkt?endpoint=ftp://h").contains("http://"));
        assert!(err("s3://bkt?endpoint=h/path").contains("without a path"));
        assert!(err("s3://bkt?scheme=gopher").contains("scheme=gopher"));
    }

    #[test]
    fn region_default_from_env_argument() {
        let StoreUrl::S3(u) = StoreUrl::parse("s3://bkt", Some("eu-central-1")).unwrap() else {
            panic!()
        };
        assert_eq!(u.region, "eu-central-1");
        let StoreUrl::S3(u) =
            StoreUrl::parse("s3://bkt?region=garage", Some("eu-central-1")).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.region, "garage");
    }

    #[test]
    fn multipart_and_cache_params() {
        let u = s3("s3://bkt?multipart-upload=true&multipart-chunk-size=10485760&multipart-threshold=1\
                    &storage-class=STANDARD_IA&compression=xz&compression-level=6&secret-key=/etc/nix/k1\
                    &secret-keys=/k2,/k3&priority=30&want-mass-query=true&parallel-compression=1&write-nar-listing=0");
        assert_eq!(u.multipart_upload, Some(true));
        assert_eq!((u.part_size, u.multipart_threshold), (10 * 1024 * 1024, 1));
        assert_eq!(u.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(u.cache.compression.as_deref(), Some("xz"));
        assert_eq!(u.cache.compression_level, Some(6));
        assert_eq!(
            u.cache.secret_keys,
            vec![
                PathBuf::from("/etc/nix/k1"),
                PathBuf::from("/k2"),
                PathBuf::from("/k3")
            ]
        );
        assert_eq!(
            (u.cache.priority, u.cache.want_mass_query),
            (Some(30), Some(true))
        );
        assert_eq!(
            s3("s3://bkt?buffer-size=6291456").part_size,
            6 * 1024 * 1024
        );
        assert!(err("s3://bkt?multipart-chunk-size=1000").contains("5 MiB"));
        assert!(err("s3://bkt?write-nar-listing=1").contains("not supported yet"));
        assert!(err("s3://bkt?priority=high").contains("not a number"));
        assert!(err("s3://bkt?want-mass-query=maybe").contains("not a boolean"));
    }

    #[test]
    fn unknown_parameters() {
        let m = err("s3://bkt?foo=1");
        assert!(
            m.starts_with("unknown parameter 'foo' in store URL 's3://bkt?foo=1'; known: "),
            "{m}"
        );
        assert!(m.contains("endpoint") && m.contains("secret-key"), "{m}");
        let m = err("file:///srv/cache?endpoint=x");
        assert!(
            m.starts_with("unknown parameter 'endpoint'") && !m.contains("multipart"),
            "{m}"
        );
        assert!(err("s3://bkt?region=a&region=b").contains("twice"));
    }

    #[test]
    fn bucket_names() {
        for ok in [
            "abc",
            "nix-cache",
            "my.bucket.1",
            "a23456789012345678901234567890123456789012345678901234567890123",
        ] {
            assert!(validate_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Nix",
            "-abc",
            "abc-",
            "a_b",
            "a..b",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
        assert!(err("s3://?endpoint=x").contains("names no bucket"));
        assert!(err("s3://Nix-Cache").contains("lowercase"));
        assert!(err("s3://bkt/prefix").contains("prefix"));
    }

    #[test]
    fn file_urls_and_schemes() {
        let u = StoreUrl::parse(
            "file:///srv/nix%20cache?compression=zstd&secret-key=/k",
            None,
        )
        .unwrap();
        let StoreUrl::File { dir, params } = u else {
            panic!()
        };
        assert_eq!(dir, PathBuf::from("/srv/nix cache"));
        assert_eq!(params.compression.as_deref(), Some("zstd"));
        assert!(err("file://relative/dir").contains("absolute path"));
        let m = err("https://cache.example.org");
        assert!(m.contains("file://") && m.contains("s3://"), "{m}");
        assert!(err("ssh://host").contains("unsupported scheme 'ssh'"));
        assert!(err("/just/a/path").contains("no scheme"));
        assert!(err("s3://bkt?region=%zz").contains("percent"));
    }
}
