//! Nix signing keys and narinfo signatures (Ed25519, as libsodium makes them).
//!
//! Key files are `name:base64(…)`: 64 bytes (seed ‖ public key) for a secret key,
//! 32 bytes for a public key. Signatures are `name:base64(64 bytes)` over the
//! narinfo fingerprint. Key material never appears in `Debug`, `Display` or errors.

use crate::encoding::{base64_decode, base64_encode};
use crate::error::{Error, Result};
use ed25519_compact::{KeyPair, PublicKey as EdPublic, Seed, Signature};
use std::fmt;
use std::path::Path;

pub struct SecretKey {
    name: String,
    kp: KeyPair,
}

#[derive(Clone)]
pub struct PublicKey {
    pub name: String,
    key: EdPublic,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

/// Split `name:payload` the way Nix does (at the first colon, both sides non-empty).
/// Trailing whitespace (a final newline, CRLF) is ignored, as Nix's decoder does.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let (name, payload) = text.trim_end().split_once(':')?;
    (!name.is_empty() && !payload.is_empty()).then_some((name, payload))
}

impl SecretKey {
    /// Parse the contents of a secret key file. `what` names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<SecretKey> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "secret key {what} is not valid: {why}; expected 'name:base64' as written by \
                 'nix key generate-secret' or 'narpush keygen'"
            ))
        };
        if text.trim().is_empty() {
            return Err(bad("the file is empty"));
        }
        let (name, payload) = split_key(text).ok_or_else(|| bad("no 'name:' prefix"))?;
        if name.contains(char::is_whitespace) {
            return Err(bad("the key name contains whitespace"));
        }
        let bytes =
            base64_decode(payload).ok_or_else(|| bad("the part after ':' is not base64"))?;
        match bytes.len() {
            64 => {}
            32 => {
                return Err(bad(
                    "this is a public key (32 bytes); give the secret key file",
                ))
            }
            n => return Err(bad(&format!("it decodes to {n} bytes, not 64"))),
        }
        let seed = Seed::from_slice(&bytes[..32]).map_err(|_| bad("bad seed"))?;
        let kp = KeyPair::from_seed(seed);
        if kp.pk.as_ref() != &bytes[32..] {
            return Err(bad("its public half does not match its seed"));
        }
        Ok(SecretKey {
            name: name.to_string(),
            kp,
        })
    }

    /// Load a key file, refusing nothing for its mode but returning a warning when
    /// the file is readable by group or others (as ssh warns).
    pub fn load(path: &Path) -> Result<(SecretKey, Option<String>)> {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("read secret key file", path, e))?;
        let key = SecretKey::parse(&text, &format!("file {}", path.display()))?;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        let warning = (mode & 0o077 != 0).then(|| {
            format!(
                "secret key file {} is accessible by others (mode {:o}); run 'chmod 600 {}'",
                path.display(),
                mode & 0o777,
                path.display()
            )
        });
        Ok((key, warning))
    }

    /// A fresh random key.
    pub fn generate(name: &str) -> Result<SecretKey> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            return Err(Error::Usage(format!(
                "key name '{name}' is not valid: it must be non-empty, without ':' or spaces (e.g. 'nix-cache-1')"
            )));
        }
        Ok(SecretKey {
            name: name.to_string(),
            kp: KeyPair::from_seed(Seed::generate()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret key file contents (`name:base64(seed‖pk)`, no newline, like Nix).
    pub fn to_file_string(&self) -> String {
        format!("{}:{}", self.name, base64_encode(self.kp.sk.as_ref()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.kp.pk,
        }
    }

    /// `name:base64(signature)` over `message` (deterministic).
    pub fn sign(&self, message: &[u8]) -> String {
        format!(
            "{}:{}",
            self.name,
            base64_encode(self.kp.sk.sign(message, None).as_ref())
        )
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey> {
        let bad =
            |why: &str| Error::Usage(format!("public key '{}' is not valid: {why}", text.trim()));
        let (name, payload) = split_key(text).ok_or_else(|| bad("expected 'name:base64'"))?;
        let bytes = base64_decode(payload).ok_or_else(|| bad("not base64"))?;
        let key = EdPublic::from_slice(&bytes).map_err(|_| bad("not 32 bytes"))?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    /// `name:base64(32 bytes)`, as `nix key convert-secret-to-public` prints it.
    pub fn to_file_string(&self) -> String {
        format!("{}:{}", self.name, base64_encode(self.key.as_ref()))
    }

    /// Whether `sig` (`name:base64`) is this key's valid signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &str) -> bool {
        let Some((name, payload)) = split_key(sig) else {
            return false;
        };
        let Some(bytes) = base64_decode(payload) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        name == self.name && self.key.verify(message, &sig).is_ok()
    }
}

/// The key name of a signature string.
pub fn sig_key_name(sig: &str) -> &str {
    sig.split_once(':').map_or(sig, |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nix-formats.md §11.3 and §11.4: a key made by `nix key generate-secret` and the
    /// signature `nix copy --to file://…?secret-key=` wrote with it.
    const SK: &str = "test-cache-1:bDiZM4CWfWfLCU8vJCx/FTnehKVhhOUUGL1N/eXgn2MKey5n3/I1p0b/biweYPt6OqJyHbD0zTyKdfoluMqrOw==";
    const PK: &str = "test-cache-1:CnsuZ9/yNadG/24sHmD7ejqich2w9M08inX6JbjKqzs=";

    #[test]
    fn signs_like_nix() {
        let sk = SecretKey::parse(SK, "test").unwrap();
        assert_eq!(sk.public().to_file_string(), PK);
        let fp = "1;/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-single.txt;sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa;120;";
        let sig = sk.sign(fp.as_bytes());
        assert_eq!(
            sig,
            "test-cache-1:i6T34iDvhmPdY6GBTbRkJdaJG9/YKDurHYQDG1l53xKMryMqOJ8Sbgmk2beKldHTRm0gmeK8uLtF7/LRVMG4BA=="
        );
        let pk = PublicKey::parse(PK).unwrap();
        assert!(pk.verify(fp.as_bytes(), &sig));
        assert!(!pk.verify(b"1;other", &sig));
        assert_eq!(sk.to_file_string(), SK);
    }

    #[test]
    fn accepts_trailing_newline_and_crlf() {
        assert!(SecretKey::parse(&format!("{SK}\n"), "t").is_ok());
        assert!(SecretKey::parse(&format!("{SK}\r\n"), "t").is_ok());
    }

    #[test]
    fn clear_errors_without_key_material() {
        for (text, needle) in [
            ("", "empty"),
            ("nocolon", "no 'name:'"),
            ("k:!!!!", "not base64"),
            ("k:AAAA", "decodes to 3 bytes"),
            (PK, "public key"),
        ] {
            let e = SecretKey::parse(text, "file k.sec")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("file k.sec"), "{e}");
        }
        let e = SecretKey::parse(&SK.replace("MKey5n", "MKey5m"), "f")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("bDiZM4CW"), "{e}");
        assert!(format!("{:?}", SecretKey::parse(SK, "t").unwrap()).contains("redacted"));
    }

    #[test]
    fn generated_keys_roundtrip() {
        let sk = SecretKey::generate("narpush-test-1").unwrap();
        let again = SecretKey::parse(&sk.to_file_string(), "t").unwrap();
        let pk = PublicKey::parse(&again.public().to_file_string()).unwrap();
        assert!(pk.verify(b"x", &sk.sign(b"x")));
        assert!(SecretKey::generate("bad name").is_err());
    }
}
