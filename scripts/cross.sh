#!/usr/bin/env bash
# Build a static narpush for the Raspberry Pi (64-bit: aarch64, musl) in release mode.
#
# Installs what it needs when missing (idempotent): the rustup target
# aarch64-unknown-linux-musl and Debian's gcc-aarch64-linux-gnu (the C compiler for
# zstd-sys and ring). Uses cargo's --target, so the host build in target/release is
# not touched; the result is target/aarch64-unknown-linux-musl/cross/narpush (under
# $CARGO_TARGET_DIR if that is set). Prints its size and `file`'s view of it.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-musl
PROFILE=cross

need_pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_pkgs+=(gcc-aarch64-linux-gnu)
# The C headers for the target (stdint.h and friends); without them the cross gcc
# falls through to the host's /usr/include and fails on ring's C files.
[ -e /usr/aarch64-linux-gnu/include/stdint.h ] || need_pkgs+=(libc6-dev-arm64-cross)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "cross: installing Debian packages: ${need_pkgs[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "cross: installing rustup target $TARGET"
  rustup target add "$TARGET"
fi

# The C parts (zstd-sys, ring) are compiled by the cross gcc (against the glibc
# cross headers; they use only plain libc calls that musl provides). The link is
# driven by the same gcc, but rustc passes Rust's self-contained musl (the crt objects
# and libc.a shipped with the rustup target) and -static, so the result is a static
# executable that runs on any aarch64 Linux (Raspberry Pi OS 64-bit, NixOS, ...).
# Override the linker with CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER (for
# example rust-lld) if a different gcc cannot link it.
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}

echo "cross: cargo build --profile $PROFILE --target $TARGET (linker $CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER)"
cargo build --locked --profile "$PROFILE" --target "$TARGET"

out="${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE/narpush"
aarch64-linux-gnu-strip "$out"
info=$(file -b "$out")
echo "cross: $out: $info"
case "$info" in
  *ELF\ 64-bit*ARM\ aarch64*static*) ;;
  *) echo "cross: FAIL: $out is not a static aarch64 ELF executable" >&2; exit 1 ;;
esac
size=$(stat -c %s "$out")
echo "cross: size $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }') MiB, budget 4 MiB)"
if [ "$size" -ge $((4 * 1024 * 1024)) ]; then
  echo "cross: FAIL: over the 4 MiB budget" >&2
  exit 1
fi
