pub mod cache;
pub mod nix;
pub mod s3server;
