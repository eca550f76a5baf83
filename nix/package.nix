# narpush built from this source tree with the committed Cargo.lock.
# callPackage it from any nixpkgs (the flake does, for the host and for the
# Raspberry Pi cross targets via pkgsCross.*.pkgsStatic).
{ lib, rustPlatform }:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "narpush";
  inherit (cargoToml.package) version;

  # Only what cargo needs, so editing nix/, scripts/ or docs does not rebuild.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The tests need a real S3 server (s3s-fs, which is not in nixpkgs) and a real,
  # writable Nix store with nix-build/nix-store; neither exists in the build sandbox.
  # They run with `make test` (and the cross build with `make test-cross`) instead.
  doCheck = false;

  meta = {
    description = cargoToml.package.description;
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "narpush";
    platforms = lib.platforms.linux;
  };
}
