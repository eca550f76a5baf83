# A tiny TOML writer for /etc/narpush.toml, using builtins only (so it is testable
# without nixpkgs: `nix-instantiate --eval --strict nix/toml.nix -A example`).
# Writes exactly the subset narpush's config parser reads: one `key = value` per
# line, values being strings, integers, booleans or flat arrays of those. Attrs whose
# value is null are left out. Strings are written as TOML basic strings via JSON's
# escaping, which TOML's basic strings share (\" \\ \n \t \uXXXX).
let
  value = v:
    if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v then toString v
    else if builtins.isString v then builtins.toJSON v
    else if builtins.isPath v then builtins.toJSON (toString v)
    else if builtins.isList v then
      "[" + builtins.concatStringsSep ", " (map value v) + "]"
    else throw "narpush.toml: cannot write a ${builtins.typeOf v} (only strings, integers, booleans and lists of them)";

  toTOML = attrs:
    builtins.concatStringsSep "" (map
      (k: "${k} = ${value attrs.${k}}\n")
      (builtins.filter (k: attrs.${k} != null) (builtins.attrNames attrs)));
in
{
  inherit toTOML;

  # What the module writes for the guide's example values.
  example = toTOML {
    to = "s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local";
    key-file = [ "/etc/nix/cache-key.sec" ];
    credentials-file = "/etc/narpush/credentials.env";
    compression = "zstd";
    upstream-key = [ "cache.nixos.org-1" ];
    state-dir = "/var/lib/narpush";
    jobs = 4;
    strict = false;
    verbose = null;
  };
}
