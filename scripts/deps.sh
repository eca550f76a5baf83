#!/usr/bin/env bash
# Install what narpush's tests and demo need, idempotently, on a Debian machine:
# Nix (Debian's nix-bin) when `nix` is missing, stunnel4 and openssl for the TLS test,
# qemu-user and the aarch64 cross compiler for the Raspberry Pi build, debootstrap
# for the Nix 2.26 chroot (scripts/nix226.sh), and the S3 server s3s-fs (from
# crates.io) into the project-local .tools directory.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v nix-store >/dev/null 2>&1 || need_pkgs+=(nix-bin)
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || need_pkgs+=(stunnel4)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap)
if [ "${NARPUSH_SKIP_CROSS:-}" != 1 ]; then
  command -v qemu-aarch64 >/dev/null 2>&1 || need_pkgs+=(qemu-user)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_pkgs+=(gcc-aarch64-linux-gnu)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${need_pkgs[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Nix in single-user mode as root needs its state directories; touching the store
# once here creates its database before the tests open it from many processes.
if [ "$(id -u)" = 0 ]; then
  mkdir -p /nix/var/nix/profiles/per-user/root /nix/var/nix/gcroots/per-user/root /nix/store
fi
init=$(mktemp -d)
echo narpush > "$init/narpush-deps-check"
nix-store --add "$init/narpush-deps-check" >/dev/null
rm -rf "$init"

S3S_VERSION=0.14.1
if ! [ -x .tools/bin/s3s-fs ] || ! grep -qx "$S3S_VERSION" .tools/s3s-fs.version 2>/dev/null; then
  echo "deps: building s3s-fs $S3S_VERSION (the test S3 server) into .tools"
  cargo install "s3s-fs@$S3S_VERSION" --features binary --locked --root .tools --quiet
  echo "$S3S_VERSION" > .tools/s3s-fs.version
fi

if [ "${NARPUSH_SKIP_CROSS:-}" != 1 ]; then
  rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-musl \
    || rustup target add aarch64-unknown-linux-musl
fi
echo "deps: ready (nix $(nix --version | awk '{print $3}'), s3s-fs $S3S_VERSION)"
