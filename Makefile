# narpush — the two commands the README opens with:
#   make demo   a local S3 server, a Nix build with narpush as post-build-hook, and a
#               fresh store substituting the result from the bucket with signatures required
#   make test   everything: installs what the tests need (scripts/deps.sh), then lints and tests
PREFIX ?= /usr/local
CARGO ?= cargo
export NARPUSH_S3S_FS ?= $(CURDIR)/.tools/bin/s3s-fs
# Where cargo puts its output (CARGO_TARGET_DIR when set, as cargo does).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build release deps nix226 demo test lint unit check-nix cross test-cross bench install uninstall clean

all: build

build:
	$(CARGO) build --release

deps:
	bash scripts/deps.sh

# Debian 13's Nix 2.26 in a chroot under .tools (tests/nix226.rs); made once, reused.
nix226: deps
	bash scripts/nix226.sh

demo: deps build
	bash scripts/demo.sh

test: deps nix226 lint check-nix
	$(CARGO) test --all-targets -- --test-threads=4
	$(MAKE) test-cross

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings

# Every .nix file in the project must at least parse (nixpkgs is not available here).
check-nix:
	@set -e; for f in $$(git ls-files '*.nix'); do nix-instantiate --parse "$$f" >/dev/null; echo "parsed $$f"; done

cross:
	bash scripts/cross.sh

test-cross: cross
	bash scripts/test-cross.sh

bench: deps build
	bash scripts/bench.sh
	bash scripts/bench-net.sh
	bash scripts/bench-hook.sh

install: build
	install -D -m 0755 $(TARGET_DIR)/release/narpush $(DESTDIR)$(PREFIX)/bin/narpush
	install -D -m 0755 hooks/narpush-hook $(DESTDIR)$(PREFIX)/libexec/narpush/narpush-hook
	install -D -m 0644 hooks/systemd/narpush-retry.service $(DESTDIR)$(PREFIX)/share/narpush/systemd/narpush-retry.service
	install -D -m 0644 hooks/systemd/narpush-retry.timer $(DESTDIR)$(PREFIX)/share/narpush/systemd/narpush-retry.timer
	install -D -m 0644 hooks/systemd/narpush-pusher.service $(DESTDIR)$(PREFIX)/share/narpush/systemd/narpush-pusher.service
	install -D -m 0644 hooks/systemd/narpush-pusher.path $(DESTDIR)$(PREFIX)/share/narpush/systemd/narpush-pusher.path

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/narpush $(DESTDIR)$(PREFIX)/libexec/narpush/narpush-hook
	rm -rf $(DESTDIR)$(PREFIX)/share/narpush

clean:
	$(CARGO) clean
