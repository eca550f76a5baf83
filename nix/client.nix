# The read-only side: machines that only substitute from the cache narpush fills.
#
#   services.narpush.substituter = {
#     url = "https://s3.homelab.local/nix-cache";
#     publicKey = "nixbuilder-1:BASE64...";
#   };
#
# adds the URL to extra-substituters and the key to extra-trusted-public-keys; it
# installs nothing and needs no credentials (the bucket allows anonymous download).
{ config, lib, ... }:

let
  cfg = config.services.narpush.substituter;
  inherit (lib) mkOption types;
in
{
  options.services.narpush.substituter = {
    url = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://s3.homelab.local/nix-cache";
      description = ''
        HTTP(S) URL of the bucket narpush pushes to, as Nix reads it (anonymous
        download). Null (the default) leaves the Nix settings alone.
      '';
    };
    publicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "nixbuilder-1:3ELv2YGNgljkwz7Bsvdz9Pd/ItsgS1jNrqM6h1uAeVE=";
      description = "The public key (NAME:BASE64) matching narpush's signing key.";
    };
  };

  config = lib.mkIf (cfg.url != null) {
    assertions = [
      {
        assertion = cfg.publicKey != null;
        message = "services.narpush.substituter.publicKey must be set with substituter.url: Nix requires signatures.";
      }
    ];
    nix.settings.extra-substituters = [ cfg.url ];
    nix.settings.extra-trusted-public-keys = lib.optional (cfg.publicKey != null) cfg.publicKey;
  };
}
