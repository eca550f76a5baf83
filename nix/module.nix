# NixOS module: narpush as Nix's post-build-hook on a builder, pushing every local
# build as a signed binary cache to S3. The hook only queues (it never blocks the
# build loop); a systemd path unit starts narpush-pusher.service, which uploads the
# queue at low CPU and IO priority, whenever a hook queues something; a timer
# retries what an outage left.
#
#   services.narpush = {
#     enable = true;
#     cache = "s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local";
#     secretKeyFile = "/etc/nix/cache-key.sec";
#     credentialsFile = "/etc/narpush/credentials";
#   };
#
# Secrets (the signing key, the S3 credentials) are named by path as strings and read
# by narpush at run time; they are never copied into the world-readable Nix store.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.narpush;
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  inherit (import ./toml.nix) toTOML;

  exe = lib.getExe cfg.package;

  settings = {
    to = cfg.cache;
    key-file = [ cfg.secretKeyFile ];
    credentials-file = cfg.credentialsFile;
    compression = cfg.compression;
    upstream-key = cfg.upstreamKeys;
    state-dir = cfg.stateDir;
    # The hook only queues; narpush-pusher.path starts the pusher service.
    spawn-pusher = false;
  } // lib.optionalAttrs (cfg.exclude != [ ]) {
    exclude = cfg.exclude;
  } // cfg.extraConfig;

  # A run-time path, not a store path: refuse one that would put a secret in the store.
  notInStore = name: value: {
    assertion = value == null || !(lib.hasPrefix "${builtins.storeDir}/" value);
    message = "services.narpush.${name} = ${toString value} is in the Nix store, which every user can read; name a file outside it (e.g. under /etc or /run/secrets).";
  };
  absolute = name: value: {
    assertion = value == null || lib.hasPrefix "/" value;
    message = "services.narpush.${name} must be an absolute path, not ${toString value}.";
  };
in
{
  imports = [ ./client.nix ];

  options.services.narpush = {
    enable = mkEnableOption "narpush, pushing every local build to a signed binary cache on S3 (Nix post-build-hook)";

    package = mkOption {
      type = types.package;
      default = pkgs.narpush or (pkgs.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.narpush or (pkgs.callPackage ./package.nix { })";
      description = "The narpush package.";
    };

    cache = mkOption {
      type = types.str;
      example = "s3://nix-cache?profile=nixbuilder&endpoint=s3.homelab.local";
      description = ''
        The binary cache to push to: `s3://BUCKET?region=R&endpoint=HOST&profile=P`
        (https unless `scheme=http` is given) or `file:///DIR`. Written to
        /etc/narpush.toml as `to`.
      '';
    };

    secretKeyFile = mkOption {
      type = types.str;
      example = "/etc/nix/cache-key.sec";
      description = ''
        Path of the secret signing key (NAME:BASE64, as made by `narpush keygen` or
        `nix key generate-secret`), readable by root only. A string, read at run
        time: it is not copied into the Nix store.
      '';
    };

    credentialsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/narpush/credentials";
      description = ''
        Path of the S3 credentials: an env file with AWS_ACCESS_KEY_ID= and
        AWS_SECRET_ACCESS_KEY= lines (AWS_SESSION_TOKEN= optional), or an AWS INI
        credentials file whose profile is the one in `cache` (`profile=`). A string,
        read at run time, never copied into the Nix store. Null: narpush falls back
        to the AWS_* environment and root's ~/.aws files.
      '';
    };

    compression = mkOption {
      type = types.enum [ "zstd" "xz" "none" ];
      default = "zstd";
      description = "NAR compression. Nix since 2.4 reads zstd; use xz for older clients.";
    };

    upstreamKeys = mkOption {
      type = types.listOf types.str;
      default = [ "cache.nixos.org-1" ];
      description = "Paths signed by any of these keys are already in an upstream cache and are not pushed.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/narpush";
      description = "Where narpush keeps the list of paths whose push failed, for `narpush retry`.";
    };

    exclude = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "*-source" "*.iso" ];
      description = ''
        Store paths whose name (the part after the hash) matches one of these globs
        are neither queued nor pushed as dependencies.
      '';
    };

    pusher = {
      nice = mkOption {
        type = types.ints.between (-20) 19;
        default = 10;
        description = "CPU priority (Nice=) of narpush-pusher.service, so builds stay responsive.";
      };
      ioSchedulingClass = mkOption {
        type = types.enum [ "idle" "best-effort" "realtime" ];
        default = "idle";
        description = "IOSchedulingClass= of narpush-pusher.service (idle: only when no one else reads or writes).";
      };
    };

    retryInterval = mkOption {
      type = types.str;
      default = "15min";
      description = "How often narpush-retry.timer pushes the pending list (a systemd time span).";
    };

    gc = {
      enable = mkEnableOption ''
        `narpush gc` from a systemd timer: deletes from the cache what was not pushed
        within `olderThan`, keeping the closures of what stays and of `keep` whole
        (the safe replacement for an object-expiry lifecycle rule)'';

      olderThan = mkOption {
        type = types.strMatching "[0-9]+[smhdw]";
        default = "30d";
        example = "14d";
        description = "Keep what was pushed (or pushed again) within this duration (at least 1d).";
      };

      keep = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/nix/var/nix/profiles/system" ];
        description = "Store paths (or symlinks to them, such as system profiles) kept with their closures however old.";
      };

      dates = mkOption {
        type = types.str;
        default = "weekly";
        example = "daily";
        description = "When to run gc (a systemd calendar event).";
      };
    };

    extraConfig = mkOption {
      type = types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]);
      default = { };
      example = { jobs = 4; compression-level = 9; deps = "closure"; };
      description = ''
        More /etc/narpush.toml keys (the long option names of `narpush push --help`),
        merged over the ones above.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      (absolute "secretKeyFile" cfg.secretKeyFile)
      (notInStore "secretKeyFile" cfg.secretKeyFile)
      (absolute "credentialsFile" cfg.credentialsFile)
      (notInStore "credentialsFile" cfg.credentialsFile)
    ];

    environment.systemPackages = [ cfg.package ];

    # narpush reads /etc/narpush.toml when neither --config nor NARPUSH_CONFIG is set.
    environment.etc."narpush.toml".text = toTOML settings;

    # Runs as root in the nix-daemon after each local build, with OUT_PATHS and
    # DRV_PATH; a failed push is recorded in stateDir, the build still succeeds.
    nix.settings.post-build-hook = exe;

    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0700 root root -" ];

    systemd.services.narpush-retry = {
      description = "Push the builds narpush could not push at build time";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # narpush asks Nix about store paths (nix path-info, nix-store --dump).
      path = [ config.nix.package ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${exe} retry";
        StateDirectory = lib.mkIf (cfg.stateDir == "/var/lib/narpush") "narpush";
        StateDirectoryMode = "0700";
      };
    };

    # The hook creates stateDir/pusher.wake after queueing; the pusher removes it
    # before it reads the queue, and systemd checks the path again when the service
    # stops, so a build queued during a run starts the next one.
    systemd.paths.narpush-pusher = {
      description = "Start the narpush pusher when a build is queued";
      wantedBy = [ "paths.target" ];
      pathConfig = {
        PathExists = "${cfg.stateDir}/pusher.wake";
        Unit = "narpush-pusher.service";
      };
    };

    systemd.services.narpush-pusher = {
      description = "Push the Nix store paths narpush hooks queued";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      path = [ config.nix.package ];
      serviceConfig = {
        Type = "exec";
        ExecStart = "${exe} pusher";
        Nice = cfg.pusher.nice;
        IOSchedulingClass = cfg.pusher.ioSchedulingClass;
        StandardOutput = "journal";
        StandardError = "journal";
        StateDirectory = lib.mkIf (cfg.stateDir == "/var/lib/narpush") "narpush";
        StateDirectoryMode = "0700";
      };
    };

    systemd.services.narpush-gc = mkIf cfg.gc.enable {
      description = "Delete what was not pushed to the binary cache within ${cfg.gc.olderThan}";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      path = [ config.nix.package ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = lib.escapeShellArgs ([ exe "gc" "--older-than" cfg.gc.olderThan ]
          ++ lib.concatMap (k: [ "--keep" k ]) cfg.gc.keep);
      };
    };

    systemd.timers.narpush-gc = mkIf cfg.gc.enable {
      description = "Run narpush gc ${cfg.gc.dates}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.dates;
        Persistent = true;
        RandomizedDelaySec = "1h";
      };
    };

    systemd.timers.narpush-retry = {
      description = "Retry narpush's pending pushes every ${cfg.retryInterval}";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "5min";
        OnUnitActiveSec = cfg.retryInterval;
        RandomizedDelaySec = "1min";
      };
    };
  };
}
