pub mod cache;
pub mod cachecheck;
pub mod life;
pub mod nix;
pub mod nix226;
pub mod proxy;
pub mod s3server;
pub mod tlsutil;

use std::path::Path;

/// The text of `path`, or "" when it does not exist (a list never written, a log
/// not started). Any other failure (no permission, a directory in the way) fails
/// the test: a file that cannot be read must not read as empty.
#[allow(dead_code)]
pub fn read_if_exists(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}
