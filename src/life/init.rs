//! `narpush init`: make a bucket (or directory) a binary cache. Owns the
//! `nix-cache-info` it writes, the anonymous-read bucket policy, the one lifecycle
//! rule (abort incomplete multipart uploads after a day), the minimal IAM policy for
//! the pushing user, and the client settings printed at the end. Servers without
//! bucket policies or lifecycle rules get one line saying so and what to do instead.

use super::{open_cache, InitArgs};
use crate::cache::{Cache, CACHE_INFO_TYPE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::nix::signing::SecretKey;
use crate::s3::S3Error;
use crate::store_url::StoreUrl;

/// The `nix-cache-info` narpush writes.
pub fn cache_info(store_dir: &str, priority: u32) -> String {
    format!("StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: {priority}\n")
}

/// The `StoreDir` of a `nix-cache-info`, parsed as Nix does (key verbatim, value trimmed).
pub fn store_dir_of(text: &str) -> Option<&str> {
    text.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| *k == "StoreDir")
            .map(|(_, v)| v.trim())
    })
}

/// The bucket policy that lets anyone download objects (`mc anonymous set download`).
pub fn public_read_policy(bucket: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"NarpushPublicRead","Effect":"Allow","Principal":{{"AWS":["*"]}},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::{bucket}/*"]}}]}}"#
    )
}

/// The minimal policy for the user that pushes and runs `gc`/`verify`: exactly the
/// S3 actions those requests need. HEAD/GET: s3:GetObject; PUT and the multipart
/// create/part/complete: s3:PutObject; AbortMultipartUpload; DeleteObjects:
/// s3:DeleteObject; ListObjectsV2: s3:ListBucket; ListMultipartUploads:
/// s3:ListBucketMultipartUploads.
pub fn user_policy(bucket: &str) -> String {
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Statement": [
    {{
      "Effect": "Allow",
      "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::{bucket}"]
    }},
    {{
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
      "Resource": ["arn:aws:s3:::{bucket}/*"]
    }}
  ]
}}
"#
    )
}

/// The lifecycle configuration: one rule, aborting multipart uploads incomplete for
/// more than a day. No expiration: that is `gc`'s job.
pub const LIFECYCLE_XML: &str = "<LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
<Rule><ID>narpush-abort-incomplete-multipart-uploads</ID><Filter><Prefix></Prefix></Filter>\
<Status>Enabled</Status><AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>\
</AbortIncompleteMultipartUpload></Rule></LifecycleConfiguration>";

/// Whether the server said it does not implement this request.
fn unsupported(e: &S3Error) -> bool {
    matches!(e.status(), Some(501) | Some(405))
        || matches!(e.code(), Some("NotImplemented") | Some("MethodNotAllowed"))
}

/// The URL other machines substitute from: the bucket over HTTP(S), which needs
/// anonymous read, or the directory.
fn substituter_url(url: &StoreUrl) -> String {
    match url {
        StoreUrl::File { dir, .. } => format!("file://{}", dir.display()),
        StoreUrl::S3(s3) => {
            if s3.path_style() {
                format!("{}/{}", s3.endpoint.base_url(), s3.bucket)
            } else {
                let mut ep = s3.endpoint.clone();
                ep.host = format!("{}.{}", s3.bucket, ep.host);
                ep.base_url()
            }
        }
    }
}

pub fn run(a: &InitArgs, config: &Config) -> Result<i32> {
    if a.print_policy {
        // Needs no credentials and asks the server nothing: it is run before the
        // user it is for exists.
        if config.to.is_none() {
            return Err(Error::Usage(
                "--print-policy needs --to s3://BUCKET?… to name the bucket".into(),
            ));
        }
        match &config.target()?.url {
            StoreUrl::S3(s3) => {
                print!("{}", user_policy(&s3.bucket));
                return Ok(0);
            }
            StoreUrl::File { .. } => {
                return Err(Error::Usage(
                    "--print-policy is for s3:// caches (a file:// cache has no bucket policy)"
                        .into(),
                ))
            }
        }
    }
    let (cache, url) = open_cache(config)?;
    let say = |m: String| {
        if !config.quiet {
            println!("{m}");
        }
    };
    let mut public_key = None;
    for k in &config.key_files {
        let (key, warning) = SecretKey::load(k)?;
        if let Some(w) = warning {
            eprintln!("narpush: warning: {w}");
        }
        public_key.get_or_insert(key.public().to_file_string());
    }

    if a.create_bucket {
        match &cache {
            Cache::S3 { client, .. } => {
                client.create_bucket()?;
                say(format!("bucket: {} is there", client.describe()));
            }
            Cache::File { .. } => cache.prepare()?,
        }
    }

    // nix-cache-info.
    let store_dir = super::store_dir();
    let want = cache_info(&store_dir, a.priority);
    cache.prepare()?;
    match cache.get("nix-cache-info")? {
        None => {
            cache.put("nix-cache-info", want.as_bytes(), CACHE_INFO_TYPE)?;
            say(format!(
                "nix-cache-info: written (StoreDir {store_dir}, WantMassQuery 1, Priority {})",
                a.priority
            ));
        }
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            match store_dir_of(&text) {
                Some(d) if d == store_dir && !a.force => {
                    say("nix-cache-info: already there for this store, left alone".into())
                }
                Some(d) if d != store_dir && !a.force => {
                    return Err(Error::Other(format!(
                        "{} is a cache for Nix stores with prefix '{d}', not '{store_dir}'; \
                         use another cache, or pass --force to rewrite its nix-cache-info",
                        cache.describe()
                    )))
                }
                _ => {
                    cache.put("nix-cache-info", want.as_bytes(), CACHE_INFO_TYPE)?;
                    say(format!("nix-cache-info: rewritten (StoreDir {store_dir})"));
                }
            }
        }
    }

    if let Cache::S3 { client, .. } = &cache {
        let bucket = &client.config().bucket;
        if a.public_read {
            match client.put_bucket_policy(&public_read_policy(bucket)) {
                Ok(()) => say("public read: anyone may now download the cache's objects".into()),
                Err(e) if unsupported(&e) => println!(
                    "public read: bucket policies are not supported by this server; give \
                     anonymous read another way (Garage: 'garage bucket website --allow {bucket}' \
                     and substitute from its website endpoint)"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        match client.put_bucket_lifecycle(LIFECYCLE_XML) {
            Ok(()) => say(
                "lifecycle: multipart uploads left incomplete for more than a day are aborted \
                 (this replaces the bucket's earlier lifecycle rules; no expiry: use 'narpush gc')"
                    .into(),
            ),
            Err(e) if unsupported(&e) => println!(
                "lifecycle: lifecycle rules are not supported by this server; incomplete \
                 multipart uploads are aborted by 'narpush gc' instead"
            ),
            Err(e) => return Err(e.into()),
        }
    } else if a.public_read {
        say("public read: a file:// cache is readable as its directory's permissions allow".into());
    }

    let sub = substituter_url(&url);
    let key =
        public_key.unwrap_or_else(|| "NAME:PUBLIC-KEY (pass --key-file to fill this in)".into());
    println!();
    println!("# On the machines that substitute, in /etc/nix/nix.conf:");
    println!("extra-substituters = {sub}");
    println!("extra-trusted-public-keys = {key}");
    println!();
    println!("# or in their NixOS configuration:");
    println!("nix.settings.extra-substituters = [ \"{sub}\" ];");
    println!("nix.settings.extra-trusted-public-keys = [ \"{key}\" ];");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_info_and_its_store_dir() {
        let t = cache_info("/nix/store", 40);
        assert_eq!(t, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
        assert_eq!(store_dir_of(&t), Some("/nix/store"));
        assert_eq!(
            store_dir_of("junk\nStoreDir:/opt/store   \n"),
            Some("/opt/store")
        );
        assert_eq!(store_dir_of(" StoreDir: /x\n"), None);
    }

    #[test]
    fn policies_are_json_naming_the_bucket() {
        for p in [user_policy("nix-cache"), public_read_policy("nix-cache")] {
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert!(p.contains("arn:aws:s3:::nix-cache"));
            assert!(v["Statement"].is_array());
        }
        let p = user_policy("b");
        for action in [
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:ListBucket",
            "s3:AbortMultipartUpload",
        ] {
            assert!(p.contains(action), "{action}");
        }
    }
}
