//! `.narinfo` files: written in Nix's field order and spelling (so every parser,
//! including stricter ones such as nix-compat, accepts them), parsed back for
//! verification, and the fingerprint that signatures cover.
//!
//! Field order (Nix's `NarInfo::to_string`): StorePath, URL, Compression, FileHash,
//! FileSize, NarHash, NarSize, References, Deriver, Sig…, CA. Every line is
//! `Key: value\n`; `References: ` keeps its space when empty.

use crate::nix::nixbase32;
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path.
    pub store_path: String,
    /// Relative to the cache root, e.g. `nar/<hash>.nar.zst`.
    pub url: String,
    /// `none`, `xz`, `zstd`, …
    pub compression: String,
    pub file_hash: Option<[u8; 32]>,
    pub file_size: Option<u64>,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Base names, sorted.
    pub references: Vec<String>,
    /// Base name of the `.drv`.
    pub deriver: Option<String>,
    /// `keyname:base64`.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// `sha256:<nix32>`, the spelling Nix writes and the fingerprint uses.
pub fn sha256_nix32(hash: &[u8; 32]) -> String {
    format!("sha256:{}", nixbase32::encode(hash))
}

/// The bytes a signature covers: `1;<path>;sha256:<nix32>;<size>;<refs,…>` with the
/// references as sorted full paths.
pub fn fingerprint(
    store_path: &str,
    nar_hash: &[u8; 32],
    nar_size: u64,
    references: &[String],
) -> String {
    let mut refs: Vec<&String> = references.iter().collect();
    refs.sort();
    let refs: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
    format!(
        "1;{store_path};{};{nar_size};{}",
        sha256_nix32(nar_hash),
        refs.join(",")
    )
}

impl NarInfo {
    /// The store directory this narinfo's path lies in.
    pub fn store_dir(&self) -> &str {
        self.store_path.rsplit_once('/').map_or("", |(d, _)| d)
    }

    /// The fingerprint of this path (references expanded to full paths).
    pub fn fingerprint(&self) -> String {
        let dir = self.store_dir();
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{dir}/{r}"))
            .collect();
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &refs)
    }

    /// Render in Nix's order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", sha256_nix32(h));
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", sha256_nix32(&self.nar_hash));
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let mut refs = self.references.clone();
        refs.sort();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// Parse a narinfo as Nix does (`Key: value` lines, unknown keys ignored), with the
    /// same requirements: StorePath, URL, NarHash and a non-zero NarSize.
    pub fn parse(text: &str) -> Result<NarInfo, String> {
        if !text.ends_with('\n') {
            return Err("narinfo does not end with a newline".into());
        }
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for (i, line) in text[..text.len() - 1].split('\n').enumerate() {
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| format!("narinfo line {}: expected 'Key: value'", i + 1))?;
            if v.contains('\r') {
                return Err(format!("narinfo line {}: carriage return", i + 1));
            }
            fields.push((k, v));
        }
        let one = |key: &str| -> Result<Option<&str>, String> {
            let mut it = fields.iter().filter(|(k, _)| *k == key);
            let first = it.next().map(|(_, v)| *v);
            if it.next().is_some() {
                return Err(format!("narinfo has more than one {key}"));
            }
            Ok(first)
        };
        let need = |key: &str| -> Result<&str, String> {
            one(key)?.ok_or_else(|| format!("narinfo lacks {key}"))
        };
        let hash = |v: &str| -> Result<[u8; 32], String> {
            let h = v
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("hash '{v}' lacks 'sha256:'"))?;
            let bytes = nixbase32::decode(h, 32)
                .ok_or_else(|| format!("hash '{v}' is not nix32 SHA-256"))?;
            Ok(bytes.try_into().expect("32 bytes"))
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("'{v}' is not a number"))
        };
        let nar_size = num(need("NarSize")?)?;
        if nar_size == 0 {
            return Err("narinfo NarSize is 0".into());
        }
        let url = need("URL")?;
        if url.is_empty() {
            return Err("narinfo URL is empty".into());
        }
        Ok(NarInfo {
            store_path: need("StorePath")?.to_string(),
            url: url.to_string(),
            compression: one("Compression")?.unwrap_or("bzip2").to_string(),
            file_hash: one("FileHash")?.map(hash).transpose()?,
            file_size: one("FileSize")?.map(num).transpose()?,
            nar_hash: hash(need("NarHash")?)?,
            nar_size,
            references: one("References")?
                .map(|r| {
                    r.split(' ')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            deriver: one("Deriver")?
                .filter(|d| *d != "unknown-deriver")
                .map(String::from),
            sigs: fields
                .iter()
                .filter(|(k, _)| *k == "Sig")
                .map(|(_, v)| v.to_string())
                .collect(),
            ca: one("CA")?.map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> [u8; 32] {
        nixbase32::decode(s, 32).unwrap().try_into().unwrap()
    }

    /// nix-formats.md §11.4: written by `nix copy --to file://…?compression=xz`.
    const REFDEMO: &str = "StorePath: /nix/store/p1nbpcrl67dl7fw506lyr6bwahz4pyac-refdemo
URL: nar/0pcgqy826zr688msnfbf14pbax7f4bhj35219llxrqgkzyw6alpn.nar.xz
Compression: xz
FileHash: sha256:0pcgqy826zr688msnfbf14pbax7f4bhj35219llxrqgkzyw6alpn
FileSize: 212
NarHash: sha256:0p2b393xwpw61vjvajf9qq0brilrp2bf24h0asdy8m76xj1f1dhc
NarSize: 336
References: 89dzn6sxfln0nbmxzz53h55bgp8icw6c-demo
Deriver: yps7mx81lgplqqcv1pr6m1dp4wbjc2xp-refdemo.drv
Sig: test-cache-1:3NejA/doZTp+aE+9faQ7NecG4/Oi46WIdX4ih1TO5amciS+esITJqURWTQ3Z/U2mRZzuB+ASp27NUg5yTvx0Cg==
";

    #[test]
    fn renders_like_nix() {
        let ni = NarInfo {
            store_path: "/nix/store/p1nbpcrl67dl7fw506lyr6bwahz4pyac-refdemo".into(),
            url: "nar/0pcgqy826zr688msnfbf14pbax7f4bhj35219llxrqgkzyw6alpn.nar.xz".into(),
            compression: "xz".into(),
            file_hash: Some(h("0pcgqy826zr688msnfbf14pbax7f4bhj35219llxrqgkzyw6alpn")),
            file_size: Some(212),
            nar_hash: h("0p2b393xwpw61vjvajf9qq0brilrp2bf24h0asdy8m76xj1f1dhc"),
            nar_size: 336,
            references: vec!["89dzn6sxfln0nbmxzz53h55bgp8icw6c-demo".into()],
            deriver: Some("yps7mx81lgplqqcv1pr6m1dp4wbjc2xp-refdemo.drv".into()),
            sigs: vec!["test-cache-1:3NejA/doZTp+aE+9faQ7NecG4/Oi46WIdX4ih1TO5amciS+esITJqURWTQ3Z/U2mRZzuB+ASp27NUg5yTvx0Cg==".into()],
            ca: None,
        };
        assert_eq!(ni.render(), REFDEMO);
        assert_eq!(NarInfo::parse(REFDEMO).unwrap(), ni);
        assert_eq!(
            ni.fingerprint(),
            "1;/nix/store/p1nbpcrl67dl7fw506lyr6bwahz4pyac-refdemo;sha256:0p2b393xwpw61vjvajf9qq0brilrp2bf24h0asdy8m76xj1f1dhc;336;/nix/store/89dzn6sxfln0nbmxzz53h55bgp8icw6c-demo"
        );
    }

    #[test]
    fn empty_references_keep_the_space_and_fingerprint_the_semicolon() {
        let ni = NarInfo {
            store_path: "/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-single.txt".into(),
            url: "nar/0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa.nar".into(),
            compression: "none".into(),
            file_hash: Some(h("0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa")),
            file_size: Some(120),
            nar_hash: h("0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa"),
            nar_size: 120,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: Some("fixed:r:sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa".into()),
        };
        let text = ni.render();
        assert!(text.contains("\nReferences: \n"));
        assert!(text.ends_with(
            "CA: fixed:r:sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa\n"
        ));
        assert_eq!(
            ni.fingerprint(),
            "1;/nix/store/ril7ajyqqj2vcnc4kl7cch6rsc18h9ff-single.txt;sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa;120;"
        );
    }

    #[test]
    fn parse_rejects_what_nix_rejects() {
        assert!(NarInfo::parse(REFDEMO.trim_end()).is_err());
        assert!(NarInfo::parse(&REFDEMO.replace("NarSize: 336", "NarSize: 0")).is_err());
        assert!(NarInfo::parse(&REFDEMO.replace('\n', "\r\n")).is_err());
        assert!(NarInfo::parse(&format!("{REFDEMO}References: x\n")).is_err());
        let no_comp = REFDEMO.replace("Compression: xz\n", "");
        assert_eq!(NarInfo::parse(&no_comp).unwrap().compression, "bzip2");
    }
}
