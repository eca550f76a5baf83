{
  description = "narpush: push Nix store paths to a signed binary cache on S3-compatible storage";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      narpushFor = pkgs: pkgs.callPackage ./nix/package.nix { };
    in
    {
      packages = forAllSystems (pkgs: {
        default = narpushFor pkgs;
        narpush = narpushFor pkgs;

        # Static musl binaries for the Raspberry Pi, cross-compiled from this system
        # (copy bin/narpush to the Pi; it needs no libraries):
        #   64-bit Raspberry Pi OS / NixOS on Pi 3, 4, 5, Zero 2
        narpush-aarch64-linux = narpushFor pkgs.pkgsCross.aarch64-multiplatform-musl.pkgsStatic;
        #   32-bit Raspberry Pi OS on Pi 2, 3, 4 (armv7l, hard float)
        narpush-armv7l-linux = narpushFor pkgs.pkgsCross.armv7l-hf-multiplatform.pkgsStatic;
        #   Pi 1 and Zero / Zero W (armv6l, hard float, musl)
        narpush-armv6l-linux = narpushFor pkgs.pkgsCross.muslpi.pkgsStatic;
      });

      overlays.default = final: prev: {
        narpush = final.callPackage ./nix/package.nix { };
      };

      # services.narpush (builder: post-build-hook, /etc/narpush.toml, retry timer) and
      # services.narpush.substituter (clients). The package defaults to pkgs.narpush
      # when the overlay is applied, else to nix/package.nix built with the system's pkgs.
      nixosModules.default = ./nix/module.nix;
      nixosModules.narpush = ./nix/module.nix;
      # Only services.narpush.substituter, for read-only machines.
      nixosModules.client = ./nix/client.nix;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt nix python3 qemu file ];
          # s3s-fs, the S3 server the tests run against, is not in nixpkgs:
          # scripts/deps.sh (make deps) installs it from crates.io into .tools/.
          shellHook = ''
            export NARPUSH_S3S_FS=''${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
            [ -x "$NARPUSH_S3S_FS" ] || echo "narpush: s3s-fs is not in nixpkgs; run 'make deps' to install it into .tools/"
          '';
        };
      });

      checks.x86_64-linux = {
        vm = import ./nix/tests/vm.nix {
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
          narpushModule = self.nixosModules.default;
        };
        package = self.packages.x86_64-linux.default;
      };
    };
}
