//! AWS Signature Version 4, pure, in its published steps: canonical request, string
//! to sign, signing key, signature; and `sign`, which returns the headers an S3
//! request must carry. Time is an argument (never the clock); payloads are always
//! signed (`x-amz-content-sha256` is the hex SHA-256 of the body), never chunked,
//! and no checksum headers are added (Garage rejects them). HMAC-SHA256 (RFC 2104)
//! is written here on `sha2`.

use super::Credentials;
use crate::encoding::hex_encode;
use sha2::{Digest, Sha256};

/// The algorithm name that opens the string to sign and the Authorization header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Hex SHA-256 of the empty string: the payload hash of bodiless requests.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A UTC instant, to the second, in civil form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcTime {
    /// Seconds since 1970-01-01T00:00:00Z to civil time (Howard Hinnant's
    /// `civil_from_days`, proleptic Gregorian).
    pub fn from_unix(secs: i64) -> UtcTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097); // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11]
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `YYYYMMDD'T'HHMMSS'Z'`, the `x-amz-date` form.
    pub fn amz_date(&self) -> String {
        format!(
            "{}T{:02}{:02}{:02}Z",
            self.date_stamp(),
            self.hour,
            self.minute,
            self.second
        )
    }

    /// `YYYYMMDD`, the date of the credential scope.
    pub fn date_stamp(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

/// HMAC-SHA256 (RFC 2104): keys longer than the 64-byte block are hashed first.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex_encode(&Sha256::digest(data))
}

/// S3's URI encoding: every byte except the unreserved `A-Z a-z 0-9 - . _ ~` becomes
/// `%XX` (uppercase hex); `/` is kept only when `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of an unencoded absolute path: each segment encoded once, the
/// slashes kept, nothing normalized (S3 does not normalize). Also the path to send.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    uri_encode(path, true)
}

/// The canonical query string of unencoded `(name, value)` pairs: both encoded,
/// sorted by name then value, joined with `&`. Also the query string to send.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical headers block and the signed-headers list: names lowercased,
/// values trimmed with inner runs of spaces collapsed, sorted by name; repeated names
/// are joined with `,` in the order given.
pub fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut hs: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match hs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => hs.push((name, value)),
        }
    }
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    let block: String = hs.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed = hs
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (block, signed)
}

/// Step 1, the canonical request. `canonical_uri` and `canonical_query` are already
/// in canonical form (see [`canonical_uri`], [`canonical_query`]); `headers` are the
/// headers to sign, including `host` and `x-amz-date`.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(&str, &str)],
    payload_sha256: &str,
) -> String {
    let (block, signed) = canonical_headers(headers);
    format!("{method}\n{canonical_uri}\n{canonical_query}\n{block}\n{signed}\n{payload_sha256}")
}

/// `YYYYMMDD/region/service/aws4_request`.
pub fn credential_scope(date_stamp: &str, region: &str, service: &str) -> String {
    format!("{date_stamp}/{region}/{service}/aws4_request")
}

/// Step 2, the string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Step 3, the signing key: HMAC chain over date, region, service, `aws4_request`.
pub fn signing_key(secret: &str, date_stamp: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date_stamp.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// Step 4, the signature: lowercase hex HMAC of the string to sign.
pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex_encode(&hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

/// What `sign` needs to know about one request.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header value (with `:port` when it is not the scheme's default).
    pub host: &'a str,
    /// The unencoded absolute path, e.g. `/bucket/nar/x.nar.zst`.
    pub path: &'a str,
    /// Unencoded query parameters.
    pub query: &'a [(&'a str, &'a str)],
    /// The request's other headers (not `host`, nor the `x-amz-*` ones `sign` adds
    /// itself). Only those [`must_sign`] allows are signed.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

/// Sign `req` at `time` and return the headers to add: `x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token` (with a session token) and
/// `Authorization`, in that order.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: UtcTime,
) -> Vec<(&'static str, String)> {
    let amz_date = time.amz_date();
    let date_stamp = time.date_stamp();
    let mut out: Vec<(&'static str, String)> = vec![
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", req.payload_sha256.to_string()),
    ];
    if let Some(token) = &creds.session_token {
        out.push(("x-amz-security-token", token.clone()));
    }
    let mut headers: Vec<(&str, &str)> = vec![("host", req.host)];
    headers.extend(req.headers.iter().filter(|(n, _)| must_sign(n)));
    headers.extend(out.iter().map(|(n, v)| (*n, v.as_str())));
    let (_, signed) = canonical_headers(&headers);
    let creq = canonical_request(
        req.method,
        &canonical_uri(req.path),
        &canonical_query(req.query),
        &headers,
        req.payload_sha256,
    );
    let scope = credential_scope(&date_stamp, region, service);
    let sts = string_to_sign(&amz_date, &scope, &creq);
    let key = signing_key(&creds.secret_access_key, &date_stamp, region, service);
    let sig = signature(&key, &sts);
    out.push((
        "Authorization",
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
            creds.access_key_id
        ),
    ));
    out
}

/// Whether a request header is signed: `host`, S3's own `x-amz-*` headers, the two
/// content headers S3 checks the body against, and `range` and `date` (AWS's own
/// examples sign them; narpush sends neither). Never one that a proxy or CDN may
/// rewrite on the way (`accept-encoding`, `user-agent`, `accept`, `content-length`…):
/// Cloudflare's edge rewriting `Accept-Encoding` broke signed uploads to R2.
pub fn must_sign(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "host" | "content-type" | "content-md5" | "range" | "date"
    ) || n.starts_with("x-amz-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(id: &str, secret: &str) -> Credentials {
        Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: None,
        }
    }

    fn sig_of(headers: &[(&'static str, String)]) -> String {
        let auth = &headers
            .iter()
            .find(|(n, _)| *n == "Authorization")
            .unwrap()
            .1;
        auth.split("Signature=").nth(1).unwrap().to_string()
    }

    // RFC 4231 §4.2, §4.3, §4.7 (https://www.rfc-editor.org/rfc/rfc4231).
    #[test]
    fn hmac_rfc4231() {
        assert_eq!(
            hex_encode(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex_encode(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex_encode(&hmac_sha256(&[0xaa; 20], &[0xdd; 50])),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
        );
        assert_eq!(
            hex_encode(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn civil_time() {
        // 1440938160 = 2015-08-30T12:36:00Z (the test suite's instant); `date -u -d @…`.
        assert_eq!(
            UtcTime::from_unix(1_440_938_160).amz_date(),
            "20150830T123600Z"
        );
        assert_eq!(UtcTime::from_unix(0).amz_date(), "19700101T000000Z");
        assert_eq!(
            UtcTime::from_unix(1_369_353_600).amz_date(),
            "20130524T000000Z"
        );
        // Expected values from GNU `date -u -d @SECS`: a leap day, a century.
        assert_eq!(
            UtcTime::from_unix(951_782_400).amz_date(),
            "20000229T000000Z"
        );
        let cases = [
            (4_102_444_799, "20991231T235959Z"),
            (4_107_542_399, "21000228T235959Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(UtcTime::from_unix(secs).amz_date(), want);
        }
        assert_eq!(UtcTime::from_unix(-1).amz_date(), "19691231T235959Z");
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(uri_encode("a b~c/d+e", false), "a%20b~c%2Fd%2Be");
        assert_eq!(canonical_uri("/nar/a b.nar"), "/nar/a%20b.nar");
        assert_eq!(canonical_uri("/test$file.text"), "/test%24file.text");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(
            canonical_query(&[("uploadId", "a/b=c"), ("partNumber", "2")]),
            "partNumber=2&uploadId=a%2Fb%3Dc"
        );
        assert_eq!(canonical_query(&[("uploads", "")]), "uploads=");
        assert_eq!(canonical_query(&[]), "");
    }

    // The signing-key example of the AWS General Reference, "Examples of how to derive
    // a signing key for Signature Version 4"
    // (https://docs.aws.amazon.com/general/latest/gr/signature-v4-examples.html).
    #[test]
    fn signing_key_aws_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex_encode(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn suite_signature(creq: &str) -> String {
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            creq,
        );
        signature(
            &signing_key(SUITE_SECRET, "20150830", "us-east-1", "service"),
            &sts,
        )
    }

    // aws-sig-v4-test-suite "get-vanilla": get-vanilla.creq / .authz, as mirrored in
    // https://github.com/awslabs/aws-c-auth/tree/main/tests/aws-signing-test-suite/v4
    #[test]
    fn suite_get_vanilla() {
        let headers = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let creq = canonical_request(
            "GET",
            &canonical_uri("/"),
            &canonical_query(&[]),
            &headers,
            EMPTY_SHA256,
        );
        assert_eq!(
            creq,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            suite_signature(&creq),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    // "get-vanilla-query-order-key-case": GET /?Param2=value2&Param1=value1
    // https://github.com/awslabs/aws-c-auth/blob/main/tests/aws-signing-test-suite/v4/get-vanilla-query-order-key-case/header-signed-request.txt
    #[test]
    fn suite_get_vanilla_query_order_key_case() {
        let headers = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let query = canonical_query(&[("Param2", "value2"), ("Param1", "value1")]);
        assert_eq!(query, "Param1=value1&Param2=value2");
        let creq = canonical_request("GET", "/", &query, &headers, EMPTY_SHA256);
        assert_eq!(
            suite_signature(&creq),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    // "post-x-www-form-urlencoded", every step, from aws-c-auth commit e70d49e6f00b:
    // tests/aws-signing-test-suite/v4/post-x-www-form-urlencoded/header-canonical-request.txt,
    // header-string-to-sign.txt and header-signed-request.txt (that version signs the
    // empty-payload hash and not x-amz-content-sha256).
    #[test]
    fn suite_post_x_www_form_urlencoded_steps() {
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("Content-Length", "13"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let creq = canonical_request("POST", "/", "", &headers, EMPTY_SHA256);
        assert_eq!(
            creq,
            "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\n\
             host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             content-length;content-type;host;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(
            "20150830T123600Z",
            &credential_scope("20150830", "us-east-1", "service"),
            &creq,
        );
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             0eccf3fbe5a3c5d3df1d87c98cdf5dbde190d26aabdd91c9407db930a0c00896"
        );
        assert_eq!(
            signature(
                &signing_key(SUITE_SECRET, "20150830", "us-east-1", "service"),
                &sts
            ),
            "4e63d719b9b2e11a61c0ada836512bc9c66dd35e5afae1d85e7bbc1fb839d8bc"
        );
    }

    const S3_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const S3_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    // Amazon S3 API Reference, "Signature Calculations for the Authorization Header:
    // Transferring Payload in a Single Chunk", Example: GET Object
    // (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
    #[test]
    fn s3_doc_get_object() {
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let creq = canonical_request(
            "GET",
            &canonical_uri("/test.txt"),
            "",
            &headers,
            EMPTY_SHA256,
        );
        assert_eq!(
            creq,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(
            "20130524T000000Z",
            "20130524/us-east-1/s3/aws4_request",
            &creq,
        );
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );

        // The same through `sign`, with the time as unix seconds.
        let req = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &[("range", "bytes=0-9")],
            payload_sha256: EMPTY_SHA256,
        };
        let out = sign(
            &req,
            &creds(S3_ID, S3_SECRET),
            "us-east-1",
            "s3",
            UtcTime::from_unix(1_369_353_600),
        );
        assert_eq!(
            sig_of(&out),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        let auth = &out.iter().find(|(n, _)| *n == "Authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(out.iter().all(|(n, _)| *n != "x-amz-security-token"));
    }

    // Same page, Example: PUT Object (key "test$file.text", body "Welcome to Amazon S3.",
    // headers Date and x-amz-storage-class signed too).
    #[test]
    fn s3_doc_put_object() {
        let body = b"Welcome to Amazon S3.";
        let hash = sha256_hex(body);
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let req = Request {
            method: "PUT",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test$file.text",
            query: &[],
            headers: &[
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            payload_sha256: &hash,
        };
        let out = sign(
            &req,
            &creds(S3_ID, S3_SECRET),
            "us-east-1",
            "s3",
            UtcTime::from_unix(1_369_353_600),
        );
        assert_eq!(
            sig_of(&out),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        let mut c = creds(S3_ID, S3_SECRET);
        c.session_token = Some("TOKEN".into());
        let req = Request {
            method: "GET",
            host: "h",
            path: "/",
            query: &[],
            headers: &[],
            payload_sha256: EMPTY_SHA256,
        };
        let out = sign(&req, &c, "us-east-1", "s3", UtcTime::from_unix(0));
        assert!(out.contains(&("x-amz-security-token", "TOKEN".to_string())));
        let auth = &out.iter().find(|(n, _)| *n == "Authorization").unwrap().1;
        assert!(auth
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"));
    }

    #[test]
    fn only_headers_that_must_be_signed_are_signed() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("TOKEN".into()),
        };
        let headers = [
            ("content-type", "application/x-nix-nar"),
            ("Accept-Encoding", "gzip"),
            ("user-agent", "narpush/0.1"),
            ("accept", "*/*"),
            ("content-length", "3"),
            ("x-amz-storage-class", "STANDARD_IA"),
            ("content-md5", "ICy5YqxZB1uWSwcVLSNLcA=="),
            ("transfer-encoding", "identity"),
            ("via", "1.1 proxy"),
        ];
        let req = Request {
            method: "PUT",
            host: "s3.example.com",
            path: "/b/k",
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        let auth = sign(&req, &creds, "us-east-1", "s3", UtcTime::from_unix(0))
            .into_iter()
            .find(|(n, _)| *n == "Authorization")
            .unwrap()
            .1;
        assert!(
            auth.contains(
                "SignedHeaders=content-md5;content-type;host;x-amz-content-sha256;\
                 x-amz-date;x-amz-security-token;x-amz-storage-class,"
            ),
            "{auth}"
        );
        // Changing an unsigned header leaves the signature as it was.
        let mut other = headers;
        other[1] = ("Accept-Encoding", "br");
        let again = Request {
            headers: &other,
            ..req.clone()
        };
        let auth2 = sign(&again, &creds, "us-east-1", "s3", UtcTime::from_unix(0))
            .into_iter()
            .find(|(n, _)| *n == "Authorization")
            .unwrap()
            .1;
        assert_eq!(auth, auth2);
    }
}
