pub mod cache;
pub mod cachecheck;
pub mod life;
pub mod nix;
pub mod nix226;
pub mod proxy;
pub mod s3server;
pub mod tlsutil;
