# NixOS VM test: MinIO holds bucket nix-cache (anonymous download), a builder with
# services.narpush pushes what it builds through the post-build-hook, and a client
# that trusts only narpush's public key substitutes it. Then MinIO is stopped, a
# second build's push fails into the pending list, and narpush-retry.service pushes
# it once MinIO is back.
#
#   nix build .#checks.x86_64-linux.vm -L        (from the flake)
#   nix-build nix/tests/vm.nix                   (with <nixpkgs> on NIX_PATH)
{ pkgs ? import <nixpkgs> { }
, narpushModule ? ../module.nix
}:

let
  # A fixed key pair for this test only (made with `nix key generate-secret`).
  # Its secret sits in the Nix store, which is fine for a throwaway VM and nothing else.
  publicKey = "narpush-vm-test-1:u5bi/9FNAxMh449V2cMy0CUKyvkJEnyqbw5x+XLgCwA=";
  secretKey = "narpush-vm-test-1:y0rm8lf20BUBFjP70igj8YOA/45eCl2SY9IhcFXHkjW7luL/0U0DEyHjj1XZwzLQJQrK+QkSfKpvDnH5cuALAA==";

  minioUser = "narpush-test";
  minioPassword = "narpush-test-secret";

  # Two derivations with a reference between them and nothing from nixpkgs (the VMs
  # have no network): only /bin/sh, which Nix's sandbox provides. The nonce makes a
  # fresh pair of store paths for each build.
  testExpr = pkgs.writeText "narpush-test.nix" ''
    { nonce }:
    let
      dep = derivation {
        name = "narpush-vm-dep";
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" "echo dependency-''${nonce} > $out" ];
      };
    in
    derivation {
      name = "narpush-vm-top";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo ''${dep} > $out" ];
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "narpush";

  nodes = {
    minio = { pkgs, ... }: {
      services.minio = {
        enable = true;
        rootCredentialsFile = pkgs.writeText "minio-credentials" ''
          MINIO_ROOT_USER=${minioUser}
          MINIO_ROOT_PASSWORD=${minioPassword}
        '';
      };
      networking.firewall.allowedTCPPorts = [ 9000 ];
      environment.systemPackages = [ pkgs.minio-client ];
    };

    builder = { lib, ... }: {
      imports = [ narpushModule ];
      services.narpush = {
        enable = true;
        cache = "s3://nix-cache?endpoint=minio:9000&scheme=http&region=us-east-1";
        secretKeyFile = "/etc/nix/narpush-test.sec";
        credentialsFile = "/etc/narpush/credentials";
      };
      # The secrets are written at boot by the test script's first step below, the way
      # a real machine would get them (agenix, sops-nix, by hand): not via the store.
      environment.etc."narpush-test-expr.nix".source = testExpr;
      nix.settings.substituters = lib.mkForce [ ];
      virtualisation.writableStore = true;
    };

    client = { lib, pkgs, ... }: {
      imports = [ narpushModule ];
      environment.systemPackages = [ pkgs.curl ];
      services.narpush.substituter = {
        url = "http://minio:9000/nix-cache";
        inherit publicKey;
      };
      # Nothing but the bucket, and only narpush's key trusted.
      nix.settings.substituters = lib.mkForce [ ];
      nix.settings.trusted-public-keys = lib.mkForce [ ];
      virtualisation.writableStore = true;
    };
  };

  testScript = ''
    start_all()

    with subtest("MinIO serves bucket nix-cache with anonymous download"):
        minio.wait_for_unit("minio.service")
        minio.wait_for_open_port(9000)
        minio.wait_until_succeeds(
            "mc alias set local http://localhost:9000 ${minioUser} ${minioPassword}", timeout=60
        )
        minio.succeed("mc mb local/nix-cache")
        minio.succeed("mc anonymous set download local/nix-cache")

    with subtest("the builder gets its secrets outside the store"):
        builder.wait_for_unit("multi-user.target")
        builder.succeed(
            "install -m 0600 /dev/null /etc/nix/narpush-test.sec",
            "echo -n '${secretKey}' > /etc/nix/narpush-test.sec",
            "install -d -m 0700 /etc/narpush",
            "install -m 0600 /dev/null /etc/narpush/credentials",
            "printf 'AWS_ACCESS_KEY_ID=%s\\nAWS_SECRET_ACCESS_KEY=%s\\n' ${minioUser} ${minioPassword} > /etc/narpush/credentials",
        )
        builder.succeed("test -d /var/lib/narpush")
        builder.succeed("grep -x 'post-build-hook = .*/bin/narpush' /etc/nix/nix.conf")
        print(builder.succeed("cat /etc/narpush.toml"))

    def build(nonce):
        return builder.succeed(
            f"nix-build /etc/narpush-test-expr.nix --argstr nonce {nonce} --no-out-link"
        ).strip()

    def narinfo_url(path):
        return "http://minio:9000/nix-cache/" + path.split("/")[-1][:32] + ".narinfo"

    with subtest("a build is queued by the post-build-hook and pushed, signed, by narpush-pusher.service"):
        top = build("first")
        builder.wait_until_succeeds("test ! -s /var/lib/narpush/pending", timeout=120)
        builder.succeed("journalctl -u narpush-pusher.service | grep -q 'pushed '")
        dep = builder.succeed(f"nix-store --query --references {top}").strip()
        assert dep.endswith("-narpush-vm-dep"), f"unexpected references of {top}: {dep!r}"
        for p in (top, dep):
            info = client.succeed(f"curl --fail --silent {narinfo_url(p)}")
            assert "Sig: narpush-vm-test-1:" in info, info

    with subtest("the client substitutes it, trusting only narpush's key"):
        client.wait_for_unit("multi-user.target")
        client.succeed("grep -x 'extra-substituters = http://minio:9000/nix-cache' /etc/nix/nix.conf")
        client.succeed(f"nix-store --realise {top}")
        client.succeed(f"test \"$(cat {top})\" = {dep}")
        client.succeed(f"grep -x dependency-first {dep}")

    with subtest("a push that fails during an outage stays queued until flush"):
        minio.systemctl("stop minio.service")
        top2 = build("second")
        builder.succeed("test -s /var/lib/narpush/pending")
        minio.systemctl("start minio.service")
        minio.wait_for_open_port(9000)
        # The pusher may be backing off; flush waits for it, or pushes itself.
        builder.succeed("narpush flush --timeout 5min")
        builder.succeed("test ! -s /var/lib/narpush/pending")
        builder.succeed("systemctl start narpush-retry.service")
        client.succeed(f"nix-store --realise {top2}")

    with subtest("the retry timer is armed"):
        builder.succeed("systemctl is-active narpush-retry.timer")
  '';
}
