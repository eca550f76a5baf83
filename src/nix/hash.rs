//! The spellings Nix writes a SHA-256 in: `sha256:` with nix32, hex or base64,
//! SRI (`sha256-<base64>`), and bare digests whose length tells the encoding, as
//! `nix path-info --json` has printed them across versions and as users paste them.

use crate::encoding::{base64_decode, hex_decode};
use crate::nix::nixbase32;

/// Hash algorithms Nix knows, with their digest sizes.
pub(crate) fn algo_size(algo: &str) -> Option<usize> {
    match algo {
        "md5" => Some(16),
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// Decode a digest of `size` bytes spelled in hex, nix32 or base64, chosen by
/// length as Nix does (`Hash::Hash(rest, type, isSRI)`).
pub(crate) fn decode_digest(s: &str, size: usize, sri: bool) -> Option<Vec<u8>> {
    let b64_len = size.div_ceil(3) * 4;
    let bytes = if sri {
        base64_decode(s)?
    } else if s.len() == size * 2 {
        hex_decode(s)?
    } else if s.len() == nixbase32::encoded_len(size) {
        nixbase32::decode(s, size)?
    } else if s.len() == b64_len {
        base64_decode(s)?
    } else {
        return None;
    };
    (bytes.len() == size).then_some(bytes)
}

/// Parse a hash of any algorithm with its algorithm named: `algo-<base64>` (SRI) or
/// `algo:<hex|nix32|base64>`.
pub(crate) fn parse_typed_hash(s: &str) -> Option<(&str, Vec<u8>)> {
    let (algo, rest, sri) = match (s.split_once(':'), s.split_once('-')) {
        (Some((a, r)), _) if algo_size(a).is_some() => (a, r, false),
        (_, Some((a, r))) if algo_size(a).is_some() => (a, r, true),
        _ => return None,
    };
    Some((algo, decode_digest(rest, algo_size(algo)?, sri)?))
}

/// A SHA-256 in any spelling of nix-formats.md §2.3: SRI `sha256-<base64>`,
/// `sha256:` followed by nix32, hex or base64, or a bare hex/nix32/base64 digest.
pub fn parse_hash_any(s: &str) -> Option<[u8; 32]> {
    let bytes = if s.contains(':') || s.contains('-') {
        match parse_typed_hash(s)? {
            ("sha256", b) => b,
            _ => return None,
        }
    } else {
        decode_digest(s, 32, false)?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(h: &str) -> [u8; 32] {
        hex_decode(h).unwrap().try_into().unwrap()
    }

    #[test]
    fn hash_spellings() {
        let want = hex32("6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3");
        for s in [
            "sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "sha256:bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "sha256:1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc",
            "sha256:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
            "6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
            "6C2E60B3F50E5871C63CFE8521182E8C3A14F00D161D6EDB85D4CD68D516CDD3",
            "1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bkc",
            "bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
        ] {
            assert_eq!(parse_hash_any(s), Some(want), "{s}");
        }
        for s in [
            "",
            "sha256:",
            "sha256-",
            "sha1-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzdM=",
            "md5:6c2e60b3f50e5871c63cfe8521182e8c",
            "sha256:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd",
            "sha256-bC5gs/UOWHHGPP6FIRgujDoU8A0WHW7bhdTNaNUWzd",
            "sha256:1lyd2vanikflhpdnw78n1pq18flc5qc231gy7k372n0fynrn0bke",
            "blake3:6c2e60b3f50e5871c63cfe8521182e8c3a14f00d161d6edb85d4cd68d516cdd3",
        ] {
            assert_eq!(parse_hash_any(s), None, "{s}");
        }
    }
}
