# narpush's NixOS module under the real module system: lib.evalModules from nixpkgs'
# lib (without the rest of nixpkgs), the stubs in ./stubs.nix for the NixOS options
# the module sets, and one configuration. Returns what a NixOS system would make of
# it, as plain data for `nix-instantiate --eval --strict --json` (tests/nixos_module.rs):
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix \
#     --argstr nixpkgsLib /work/shared/nixpkgs-lib/lib \
#     --arg configuration '{ services.narpush = { enable = true; … }; }'
#
# Failed assertions are returned as messages (NixOS refuses to build the system
# then), not thrown, so a test can check which ones fire.
{ nixpkgsLib, configuration }:

let
  lib = import nixpkgsLib;

  # Stand-ins for the packages the module names: derivation-shaped attrsets, enough
  # for types.package and lib.getExe, never built.
  fakePackage = name: mainProgram: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = mainProgram;
  };
  pkgs = {
    narpush = fakePackage "narpush-0.1.0" "narpush";
    nix = fakePackage "nix-2.26.3" "nix";
    callPackage = _: _: throw "eval.nix: the module should use pkgs.narpush here";
  };

  evaluated = lib.evalModules {
    specialArgs = { inherit pkgs; };
    modules = [ ./stubs.nix ../module.nix configuration ];
  };
  inherit (evaluated) config;

  # Submodule values carry `_module` (functions, not data); leave them out.
  plain = v:
    if builtins.isAttrs v && !(lib.isDerivation v) then
      lib.mapAttrs (_: plain) (builtins.removeAttrs v [ "_module" ])
    else if builtins.isList v then map plain v
    else if lib.isDerivation v then v.outPath
    else v;
  everything = plain {
    failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
    etc = config.environment.etc;
    systemPackages = config.environment.systemPackages;
    nixSettings = config.nix.settings;
    services = config.systemd.services;
    timers = config.systemd.timers;
    paths = config.systemd.paths;
    tmpfiles = config.systemd.tmpfiles.rules;
    users = config.users.users;
    groups = config.users.groups;
  };
in
{
  report = builtins.toJSON everything;
  narpushToml = config.environment.etc."narpush.toml".text or "";
  failedAssertions = lib.concatMapStrings (m: m + "\n") everything.failedAssertions;
}
