//! Nix's base-32 ("nix32"): the alphabet without `e o u t`, reading the bytes as a
//! little-endian integer and printing 5-bit digits most significant first. Used for
//! store-path hash parts, NarHash/FileHash and NAR file names.

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the nix32 form of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Encode bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in 0..len {
        let n = len - 1 - k;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let mut v = u16::from(bytes[i]) >> j;
        if i + 1 < bytes.len() {
            v |= u16::from(bytes[i + 1]) << (8 - j);
        }
        out.push(ALPHABET[usize::from(v & 0x1f)] as char);
    }
    out
}

/// Decode nix32 into exactly `n` bytes; `None` for a bad digit, a wrong length or
/// bits set beyond the last byte (Nix rejects those too).
pub fn decode(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != encoded_len(n) {
        return None;
    }
    let mut out = vec![0u8; n];
    for (k, c) in s.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u16;
        let b = k * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= (digit << j) as u8;
        let carry = (digit << j) >> 8;
        if i + 1 < n {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Whether every character of `s` is a nix32 digit.
pub fn is_nix32(s: &str) -> bool {
    s.bytes().all(|c| ALPHABET.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::encoding::hex_decode(s).unwrap()
    }

    #[test]
    fn sha256_of_hello_nar() {
        // nix-formats.md §11.1, checked with `nix-hash --type sha256 --to-base32`.
        let h = unhex("0a430879c266f8b57f4092a0f935cf3facd48bbccde5760d4748ca405171e969");
        assert_eq!(
            encode(&h),
            "0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa"
        );
        assert_eq!(
            decode("0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa", 32).unwrap(),
            h
        );
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn roundtrip_and_rejects() {
        for n in [1usize, 5, 20, 32] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(&encode(&bytes), n).unwrap(), bytes);
        }
        assert!(decode("0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqe", 32).is_none());
        assert!(decode("0sg9", 32).is_none());
        // 52 digits carry 260 bits; a leading digit above 1 sets bits past byte 31.
        assert!(decode(&format!("z{}", "0".repeat(51)), 32).is_none());
    }
}
