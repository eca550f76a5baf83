pub mod s3server;
