//! Where a bucket lives: the endpoint (scheme, host, port) requests go to, and S3's
//! rules for bucket names. Parsing a Nix store URL into these happens above this
//! layer (`store_url`).

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where requests go: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host` or `host:port` when the port is not the scheme's default: the `Host`
    /// header and the authority of URLs.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    /// `scheme://authority`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// S3 bucket naming rules: 3–63 characters of lowercase letters, digits, dots and
/// hyphens, starting and ending with a letter or digit, no `..`, not an IPv4 address.
pub fn validate_bucket(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return Err(format!(
            "bucket name '{name}' must be 3 to 63 characters long"
        ));
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err(format!(
            "bucket name '{name}' may contain only lowercase letters, digits, dots and hyphens"
        ));
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(format!(
            "bucket name '{name}' must start and end with a letter or digit"
        ));
    }
    if name.contains("..") {
        return Err(format!("bucket name '{name}' must not contain '..'"));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("bucket name '{name}' must not be an IP address"));
    }
    Ok(())
}
