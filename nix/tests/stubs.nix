# Stub declarations of the NixOS options narpush's module (and a module like it) sets,
# typed as NixOS types them, so that the module can be evaluated with lib.evalModules
# from nixpkgs' lib alone (nix/tests/eval.nix): a misspelt option name or a value of
# the wrong type fails the evaluation as it would in a real NixOS system.
#
# Copied in shape from nixpkgs' nixos/modules (misc/assertions.nix, system/etc/etc.nix,
# config/system-path.nix, services/system/nix-daemon.nix and config/nix.nix,
# system/boot/systemd/tmpfiles.nix, lib/systemd-unit-options.nix,
# config/users-groups.nix); only the options, not what NixOS does with them. The
# systemd unit options cover what services, timers, paths and sockets commonly use,
# so new units added to the module evaluate without touching this file.
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  # lib/systemd-lib.nix: unit file values are atoms or lists of atoms.
  unitAtom = types.oneOf [ types.bool types.int types.str types.path types.package ];
  unitOption = types.either unitAtom (types.listOf unitAtom);
  unitNames = mkOption { type = types.listOf types.str; default = [ ]; };
  unitSection = mkOption { type = types.attrsOf unitOption; default = { }; };
  lines = mkOption { type = types.lines; default = ""; };

  # lib/systemd-unit-options.nix: commonUnitOptions + stage2 additions.
  commonUnitOptions = {
    enable = mkOption { type = types.bool; default = true; };
    description = mkOption { type = types.singleLineStr; default = ""; };
    documentation = mkOption { type = types.listOf types.str; default = [ ]; };
    requires = unitNames;
    wants = unitNames;
    upholds = unitNames;
    after = unitNames;
    before = unitNames;
    bindsTo = unitNames;
    partOf = unitNames;
    conflicts = unitNames;
    requisite = unitNames;
    wantedBy = unitNames;
    requiredBy = unitNames;
    upheldBy = unitNames;
    aliases = unitNames;
    onFailure = unitNames;
    onSuccess = unitNames;
    unitConfig = unitSection;
    startLimitBurst = mkOption { type = types.int; default = 5; };
    startLimitIntervalSec = mkOption { type = types.int; default = 10; };
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
  };

  serviceOptions = commonUnitOptions // {
    environment = mkOption {
      type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
      default = { };
    };
    path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
    serviceConfig = unitSection;
    script = lines;
    scriptArgs = mkOption { type = types.str; default = ""; };
    preStart = lines;
    postStart = lines;
    reload = lines;
    preStop = lines;
    postStop = lines;
    restartIfChanged = mkOption { type = types.bool; default = true; };
    reloadIfChanged = mkOption { type = types.bool; default = false; };
    stopIfChanged = mkOption { type = types.bool; default = true; };
    startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
    enableStrictShellChecks = mkOption { type = types.bool; default = false; };
  };

  units = extra: mkOption {
    type = types.attrsOf (types.submodule { options = commonUnitOptions // extra; });
    default = { };
  };
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption { type = types.listOf types.unspecified; internal = true; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; internal = true; default = [ ]; };

    # nixos/modules/config/system-path.nix, config/shells-environment.nix
    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    environment.variables = mkOption {
      type = types.attrsOf (types.oneOf [ (types.listOf (types.oneOf [ types.int types.str types.path ])) types.int types.str types.path ]);
      default = { };
    };

    # nixos/modules/system/etc/etc.nix
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          enable = mkOption { type = types.bool; default = true; };
          target = mkOption { type = types.str; default = name; };
          text = mkOption { type = types.nullOr types.lines; default = null; };
          source = mkOption { type = types.nullOr types.path; default = null; };
          mode = mkOption { type = types.str; default = "symlink"; };
          uid = mkOption { type = types.int; default = 0; };
          gid = mkOption { type = types.int; default = 0; };
          user = mkOption { type = types.str; default = "+0"; };
          group = mkOption { type = types.str; default = "+0"; };
        };
      }));
    };

    # nixos/modules/config/nix.nix: nix.settings is freeform nix.conf, plus the typed
    # options NixOS declares; nix.package is the Nix the system runs.
    nix.package = mkOption { type = types.package; default = pkgs.nix; };
    nix.settings = mkOption {
      default = { };
      type = types.submodule {
        freeformType =
          let
            confAtom = types.nullOr (types.oneOf [ types.bool types.int types.float types.str types.path types.package ]);
          in
          types.attrsOf (types.either confAtom (types.listOf confAtom));
        options = {
          substituters = mkOption { type = types.listOf types.str; default = [ ]; };
          trusted-public-keys = mkOption { type = types.listOf types.str; default = [ ]; };
          trusted-users = mkOption { type = types.listOf types.str; default = [ "root" ]; };
          sandbox = mkOption { type = types.either types.bool (types.enum [ "relaxed" ]); default = true; };
          max-jobs = mkOption { type = types.either types.int (types.enum [ "auto" ]); default = "auto"; };
        };
      };
    };

    # nixos/modules/system/boot/systemd/tmpfiles.nix
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    systemd.tmpfiles.settings = mkOption {
      default = { };
      type = types.attrsOf (types.attrsOf (types.attrsOf (types.submodule {
        options = {
          type = mkOption { type = types.str; };
          mode = mkOption { type = types.str; default = "-"; };
          user = mkOption { type = types.str; default = "-"; };
          group = mkOption { type = types.str; default = "-"; };
          age = mkOption { type = types.str; default = "-"; };
          argument = mkOption { type = types.str; default = ""; };
        };
      })));
    };

    # nixos/lib/systemd-unit-options.nix
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule { options = serviceOptions; });
      default = { };
    };
    systemd.timers = units { timerConfig = unitSection; };
    systemd.paths = units { pathConfig = unitSection; };
    systemd.sockets = units {
      socketConfig = unitSection;
      listenStreams = mkOption { type = types.listOf types.str; default = [ ]; };
      listenDatagrams = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    systemd.targets = units { };

    # nixos/modules/config/users-groups.nix
    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          name = mkOption { type = types.str; default = name; };
          uid = mkOption { type = types.nullOr types.int; default = null; };
          isSystemUser = mkOption { type = types.bool; default = false; };
          isNormalUser = mkOption { type = types.bool; default = false; };
          group = mkOption { type = types.str; default = ""; };
          extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
          description = mkOption { type = types.str; default = ""; };
          home = mkOption { type = types.path; default = "/var/empty"; };
          createHome = mkOption { type = types.bool; default = false; };
          shell = mkOption { type = types.nullOr (types.either types.shellPackage types.path); default = null; };
        };
      }));
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          name = mkOption { type = types.str; default = name; };
          gid = mkOption { type = types.nullOr types.int; default = null; };
          members = mkOption { type = types.listOf types.str; default = [ ]; };
        };
      }));
    };
  };
}
