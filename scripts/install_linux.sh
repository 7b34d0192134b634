#!/usr/bin/env bash
# Install npu-proxy from this source checkout as a hardened systemd service.
#
#   sudo scripts/install_linux.sh                  install or upgrade, enable and (re)start
#   scripts/install_linux.sh --prefix /tmp/root    write everything under a fake root (CI)
#   scripts/install_linux.sh --dry-run             show what would be done, change nothing
#   sudo scripts/install_linux.sh --uninstall [--purge]
#
# What it creates (paths are relative to --prefix when one is given):
#   /opt/npu-proxy/venv                    the Python environment (core + every plugin)
#   /etc/npu-proxy/env                     NPU_PROXY_* settings, mode 0640, never overwritten
#   /etc/systemd/system/npu-proxy.service  the unit
#   /var/lib/npu-proxy/models              the model store (the only place the service writes,
#                                          with /var/cache/npu-proxy)
# and a system user `npu-proxy`, in the `render` and `video` groups when they exist so
# that it may open /dev/accel (NPU) and /dev/dri (GPU).
#
# Running it twice changes nothing the second time: files are rewritten only when their
# content differs, the env file only ever gains settings it does not mention yet.
set -euo pipefail

readonly SERVICE=npu-proxy
readonly SERVICE_USER=npu-proxy
readonly PORT_DEFAULT=11435
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

PREFIX=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
NO_VENV=0
NO_START=0
GENERATE_KEY=0
PYTHON=""
SOURCE_DIR=$(dirname "$SCRIPT_DIR")

usage() {
    cat <<EOF
Usage: $0 [options]

Install npu-proxy from this checkout as the systemd service '$SERVICE'.

Options:
  --prefix DIR        install under DIR as a fake root (DIR/opt, DIR/etc, DIR/var);
                      no user is created and systemctl is not called
  --dry-run           print what would be done and change nothing
  --uninstall         stop and remove the service and the virtual environment; the
                      models and /etc/npu-proxy/env are kept
  --purge             with --uninstall: also remove the models, the env file and the user
  --no-venv           skip the Python install and only write the files (fast, for CI)
  --no-start          enable the service but do not (re)start it
  --generate-api-key  put a random NPU_PROXY_API_KEY in the env file unless one is set
  --python PATH       Python 3.11+ for the virtual environment (default: the system's
                      /usr/bin/python3; it must live outside /home and /root, which the
                      service cannot see)
  --source DIR        the npu-proxy checkout to install (default: $SOURCE_DIR)
  -h, --help          this help
EOF
}

die() { echo "install_linux.sh: error: $*" >&2; exit 1; }
say() { echo "npu-proxy: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --no-venv) NO_VENV=1; shift ;;
        --no-start) NO_START=1; shift ;;
        --generate-api-key) GENERATE_KEY=1; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE_DIR=$2; shift 2 ;;
        --source=*) SOURCE_DIR=${1#--source=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge only makes sense with --uninstall"
if [ -n "$PREFIX" ]; then
    # An absolute prefix keeps every path below it, whatever the current directory.
    case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
    PREFIX=${PREFIX%/}
    [ "$PREFIX" != "" ] || die "--prefix / is the real root: leave --prefix out instead"
fi

# Real paths (what the unit names) and where they land on disk (under the prefix).
readonly OPT_REAL=/opt/npu-proxy
readonly VENV_REAL=$OPT_REAL/venv
readonly ETC_REAL=/etc/npu-proxy
readonly ENV_REAL=$ETC_REAL/env
readonly UNIT_REAL=/etc/systemd/system/$SERVICE.service
readonly STATE_REAL=/var/lib/npu-proxy
readonly MODELS_REAL=$STATE_REAL/models
readonly CACHE_REAL=/var/cache/npu-proxy
OPT_DIR=$PREFIX$OPT_REAL
VENV_DIR=$PREFIX$VENV_REAL
ETC_DIR=$PREFIX$ETC_REAL
ENV_FILE=$PREFIX$ENV_REAL
UNIT_FILE=$PREFIX$UNIT_REAL
STATE_DIR=$PREFIX$STATE_REAL
MODELS_DIR=$PREFIX$MODELS_REAL
CACHE_DIR=$PREFIX$CACHE_REAL

# The system is only touched (users, ownership, systemctl) for a real install.
SYSTEM=1
SKIP_REASON=""
if [ -n "$PREFIX" ]; then SYSTEM=0; SKIP_REASON="--prefix $PREFIX"; fi
if [ "$DRY_RUN" -eq 1 ]; then SYSTEM=0; SKIP_REASON="dry run"; fi
if [ "$SYSTEM" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0 ...), or use --prefix DIR / --dry-run"
fi

TMP_DIR=""
cleanup() { if [ -n "$TMP_DIR" ]; then rm -rf "$TMP_DIR"; fi; }
trap cleanup EXIT

CHANGED=0   # did this run change anything the running service depends on?

# --- small helpers that honour --dry-run -------------------------------------------

# run CMD...: run a command that changes the system, or only show it.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would run: $*"
    else
        "$@"
    fi
}

# system CMD...: a command that only makes sense on the real root (useradd, systemctl).
system() {
    if [ "$SYSTEM" -eq 1 ]; then
        "$@"
    else
        say "skipped ($SKIP_REASON): $*"
    fi
}

# ensure_dir DIR MODE [OWNER:GROUP]
ensure_dir() {
    local dir=$1 mode=$2 owner=${3:-}
    if [ ! -d "$dir" ]; then
        run mkdir -p "$dir"
        CHANGED=1
    fi
    if [ "$DRY_RUN" -eq 0 ]; then
        chmod "$mode" "$dir"
        if [ -n "$owner" ] && [ "$SYSTEM" -eq 1 ]; then chown "$owner" "$dir"; fi
    fi
}

# write_file DEST MODE [OWNER:GROUP] < content: replace DEST only when the content differs.
write_file() {
    local dest=$1 mode=$2 owner=${3:-} new
    new=$(mktemp "${TMP_DIR}/new.XXXXXX")
    cat >"$new"
    if [ -f "$dest" ] && cmp -s "$new" "$dest"; then
        say "unchanged $dest"
    elif [ "$DRY_RUN" -eq 1 ]; then
        if [ -f "$dest" ]; then
            say "would update $dest:"
            diff -u "$dest" "$new" || true
        else
            say "would create $dest"
        fi
        return 0
    else
        # Write beside the target and rename, so a reader never sees half a file.
        local staged
        staged=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
        cat "$new" >"$staged"
        mv -f "$staged" "$dest"
        say "wrote $dest"
        CHANGED=1
    fi
    if [ "$DRY_RUN" -eq 0 ]; then
        chmod "$mode" "$dest"
        if [ -n "$owner" ] && [ "$SYSTEM" -eq 1 ]; then chown "$owner" "$dest"; fi
    fi
}

# remove PATH...: delete files or trees (shown only, on a dry run).
remove() {
    local path
    for path in "$@"; do
        if [ -e "$path" ] || [ -L "$path" ]; then
            run rm -rf -- "$path"
            if [ "$DRY_RUN" -eq 0 ]; then say "removed $path"; fi
        fi
    done
}

# --- the env file --------------------------------------------------------------------

# Every core setting with its built-in default (MODEL_PATH: the service's; PLUGINS: an
# example) and a one-line reason to change it. Format: NAME|value|comment.
# tests/deploy checks these against npu_proxy.settings.Settings.
ENV_SETTINGS=(
    "HOST|0.0.0.0|Bind address: 0.0.0.0 lets WSL2 and nearby private networks in; 127.0.0.1 keeps it on this machine."
    "PORT|$PORT_DEFAULT|TCP port."
    "API_KEY||When set, every route but /health needs 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
    "ALLOWED_CLIENTS|127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,fe80::/10,fc00::/7|Client addresses/CIDR ranges allowed to connect ('*' allows all)."
    "ALLOWED_HOSTS||Extra Host-header names accepted besides loopback, private addresses and this machine's names."
    "ORIGINS|http://localhost,https://localhost,http://localhost:*,https://localhost:*,http://127.0.0.1,https://127.0.0.1,http://127.0.0.1:*,https://127.0.0.1:*,http://[::1],http://[::1]:*,http://0.0.0.0,http://0.0.0.0:*,app://*,file://*,tauri://*,vscode-webview://*,vscode-file://*|Browser origins allowed by CORS ('*' wildcards)."
    "MAX_BODY|32MiB|Largest request body accepted; larger ones get 413."
    "HEADER_TIMEOUT|10|Seconds a client has to send a request line and headers; slower ones get 408 and are disconnected."
    "BODY_TIMEOUT|30|Seconds a request body may take to arrive, plus one second per KiB received."
    "MAX_CLIENT_CONNECTIONS|256|Open connections one client address may hold; one more gets 503."
    "MAX_EMBEDDING_INPUTS|2048|Most inputs one embedding request may hold; more is a 400."
    "MAX_BLOB|64GiB|Largest file uploaded as a blob (ollama create); larger ones get 413."
    "BLOB_TTL|3600|Seconds an uploaded blob that no model uses is kept."
    "DEVICE|NPU|Preferred device: NPU, GPU or CPU."
    "FALLBACK_DEVICE|auto|Fallback device; auto tries NPU, GPU, CPU in order."
    "REAL_INFERENCE|1|1: real inference with OpenVINO; 0: the deterministic mock backend."
    "MODEL_PATH|$MODELS_REAL|Model store. The unit sets this; the service can only write under $STATE_REAL and $CACHE_REAL."
    "INFERENCE_TIMEOUT|180|Seconds a generation may run before it is stopped."
    "SHUTDOWN_GRACE|5|Seconds a stopping server lets streams in progress finish before it ends them."
    "MAX_PROMPT_LEN|4096|Prompt tokens the NPU is compiled for."
    "MIN_RESPONSE_LEN|128|Response tokens the NPU is compiled for."
    "TOKEN_LIMIT|1800|Prompts above this many tokens go to the fallback device (token_threshold routing)."
    "EMBEDDING_MODEL|all-minilm:latest|Embedding model used when a request names none; warmed with WARMUP."
    "EMBEDDING_DEVICE|CPU|Preferred device for embeddings."
    "EMBEDDING_CACHE_SIZE|1000|Embeddings kept in the LRU cache (0 disables it)."
    "DEFAULT_MODEL|smollm2:135m|Model loaded by warm-up."
    "WARMUP|0|1: load the default and the embedding model at startup, so first requests are fast."
    "KEEP_ALIVE|5m|How long a model stays loaded after use (negative: forever)."
    "MAX_QUEUE|512|Requests that may wait per device before 503."
    "MAX_TOKENS|2048|Most tokens a generation produces when the request sets no limit (0: the context)."
    "MAX_PARALLEL|4|Concurrent generations per CPU/GPU device (the NPU always runs one)."
    "GENERIC_TOOLS|0|1: serve tools also for models whose chat template renders none, through a generic tool prompt (0: they refuse tools)."
    "ROUTING|token_threshold|Routing policy, by name."
    "PLUGINS|ollama,openai,anthropic,openvino,openvino-npu,openvino-gpu,openvino-cpu,prometheus|Plugins to load. Unset or empty (the default): every installed plugin loads."
    "LOG_LEVEL|INFO|DEBUG, INFO, WARNING or ERROR."
)

env_header() {
    cat <<EOF
# npu-proxy settings, read by systemd (EnvironmentFile= in $UNIT_REAL).
# Each commented line shows a built-in default. To change a setting, remove the '#',
# edit the value, then: sudo systemctl restart $SERVICE
# Plugins read their own NPU_PROXY_<PLUGIN>_* variables (docs/configuration.md).
# install_linux.sh never changes a value here; it only appends settings it added later.
EOF
}

# env_entry NAME DEFAULT COMMENT: one documented, commented-out setting.
env_entry() {
    printf '\n# %s\n# NPU_PROXY_%s=%s\n' "$3" "$1" "$2"
}

# mentions FILE NAME: does FILE set or document NPU_PROXY_NAME already?
mentions() {
    grep -Eq "^[#[:space:]]*NPU_PROXY_$2=" "$1"
}

# has_api_key FILE: is an API key set (uncommented, non-empty)?
has_api_key() {
    grep -Eq '^[[:space:]]*NPU_PROXY_API_KEY=.+' "$1"
}

new_api_key() {
    # 32 random bytes, URL-safe, no padding: what secrets.token_urlsafe(32) gives.
    head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'
}

write_env_file() {
    local entry name default comment content key_line=""
    if [ "$GENERATE_KEY" -eq 1 ] && { [ ! -f "$ENV_FILE" ] || ! has_api_key "$ENV_FILE"; }; then
        key_line="NPU_PROXY_API_KEY=$(new_api_key)"
    fi
    if [ ! -f "$ENV_FILE" ]; then
        content=$(
            env_header
            for entry in "${ENV_SETTINGS[@]}"; do
                IFS='|' read -r name default comment <<<"$entry"
                env_entry "$name" "$default" "$comment"
            done
            if [ -n "$key_line" ]; then printf '\n# Generated by --generate-api-key.\n%s\n' "$key_line"; fi
        )
    else
        # Keep every existing line; append only what the file does not mention yet.
        local missing=""
        for entry in "${ENV_SETTINGS[@]}"; do
            IFS='|' read -r name default comment <<<"$entry"
            if ! mentions "$ENV_FILE" "$name"; then
                missing+=$(env_entry "$name" "$default" "$comment")$'\n'
            fi
        done
        content=$(cat "$ENV_FILE")
        if [ -n "$missing" ]; then
            content+=$'\n\n# Settings added by a newer install_linux.sh:'$'\n'"${missing%$'\n'}"
        fi
        if [ -n "$key_line" ]; then
            content+=$'\n\n# Generated by --generate-api-key.\n'"$key_line"
        fi
    fi
    # Mode 0640, group npu-proxy: the key in it is a secret, and systemd reads it as root.
    printf '%s\n' "$content" | write_file "$ENV_FILE" 0640 "root:$SERVICE_USER"
    if [ -n "$key_line" ] && [ "$DRY_RUN" -eq 0 ]; then
        say "an API key was written to $ENV_FILE; clients send it as 'Authorization: Bearer KEY'"
        say "read it with: sudo grep NPU_PROXY_API_KEY $ENV_REAL"
    fi
}

# --- the systemd unit ----------------------------------------------------------------

unit_content() {
    cat <<EOF
# npu-proxy: Ollama-, OpenAI- and Anthropic-compatible inference on Intel NPU/GPU/CPU.
# Written by scripts/install_linux.sh; local changes belong in a drop-in
# (sudo systemctl edit $SERVICE), which survives reinstalls.

[Unit]
Description=npu-proxy local inference server (Ollama/OpenAI/Anthropic APIs)
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=$SERVICE_USER
Group=$SERVICE_USER
# The model store and caches; EnvironmentFile= may override them, but only paths under
# $STATE_REAL and $CACHE_REAL are writable (ProtectSystem=strict).
Environment=NPU_PROXY_MODEL_PATH=$MODELS_REAL
Environment=HOME=$STATE_REAL
Environment=HF_HOME=$STATE_REAL/huggingface
Environment=XDG_CACHE_HOME=$CACHE_REAL
Environment=PYTHONUNBUFFERED=1
EnvironmentFile=$ENV_REAL
WorkingDirectory=$STATE_REAL
ExecStart=$VENV_REAL/bin/npu-proxy serve
Restart=on-failure
RestartSec=5s
# A stop cancels running generations at their next token; 30 s covers a slow device.
TimeoutStopSec=30s
UMask=0027

StateDirectory=npu-proxy
StateDirectoryMode=0750
CacheDirectory=npu-proxy
CacheDirectoryMode=0750
ReadWritePaths=$STATE_REAL

# Hardening. Not used, on purpose: PrivateDevices= (the NPU and GPU live in /dev),
# PrivateUsers= (device access goes through the render/video groups),
# MemoryDenyWriteExecute= (OpenVINO's CPU plugin generates code at run time) and
# ProcSubset=pid (OpenVINO reads /proc/cpuinfo to pick its CPU kernels).
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectProc=invisible
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# Devices: the standard pseudo-devices, the NPU (/dev/accel/accel*, the kernel's
# "accel" class) and Intel GPUs (/dev/dri/*, the "drm" class).
DevicePolicy=closed
DeviceAllow=char-accel rw
DeviceAllow=char-drm rw

[Install]
WantedBy=multi-user.target
EOF
}

# verify_unit: systemd-analyze verify, where it exists. A unit that does not verify is
# an error on a real install; under --prefix or --no-venv the program the unit starts
# is not at its real path yet, so a copy naming an existing program is verified instead.
verify_unit() {
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        say "systemd-analyze not found: unit not verified"
        return 0
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would verify $UNIT_FILE with systemd-analyze"
        return 0
    fi
    local unit=$UNIT_FILE
    if [ ! -x "$VENV_REAL/bin/npu-proxy" ]; then
        unit="$TMP_DIR/$SERVICE.service"
        sed "s|^ExecStart=$VENV_REAL/bin/npu-proxy |ExecStart=$(command -v true) |" \
            "$UNIT_FILE" >"$unit"
    fi
    local out
    if out=$(systemd-analyze verify --man=no "$unit" 2>&1) && [ -z "$out" ]; then
        say "systemd-analyze verify: $UNIT_REAL is valid"
        return 0
    fi
    # Outside a booted systemd (containers, chroots) verify cannot load the default
    # targets; that says nothing about this unit.
    local own
    own=$(printf '%s\n' "$out" | grep -v -E 'Unit [^ ]+\.target not found|Failed to (create|load)' || true)
    if [ -z "$own" ]; then
        say "systemd-analyze verify: no problem with $UNIT_REAL (targets not loadable here)"
        return 0
    fi
    printf '%s\n' "$own" >&2
    if [ "$SYSTEM" -eq 1 ]; then die "systemd-analyze verify rejected $UNIT_FILE"; fi
    say "warning: systemd-analyze verify reported problems (above)"
}

# --- the user ------------------------------------------------------------------------

ensure_user() {
    if [ "$SYSTEM" -eq 0 ]; then
        say "skipped ($SKIP_REASON): create system user $SERVICE_USER and add it to" \
            "the render/video groups"
        return 0
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        local nologin
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --home-dir "$STATE_REAL" --no-create-home \
            --shell "$nologin" --comment "npu-proxy inference server" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
        CHANGED=1
    fi
    local group
    for group in render video; do
        if getent group "$group" >/dev/null && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group"; then
            usermod -a -G "$group" "$SERVICE_USER"
            say "added $SERVICE_USER to group $group"
            CHANGED=1
        fi
    done
}

# --- the Python environment ----------------------------------------------------------

# choose_python: a Python 3.11+ the service can run (outside /home and /root).
choose_python() {
    local candidate
    if [ -z "$PYTHON" ]; then
        for candidate in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 \
                         /usr/bin/python3.11 /usr/local/bin/python3; do
            if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
                PYTHON=$candidate
                break
            fi
        done
        [ -n "$PYTHON" ] || die "no Python 3.11+ in /usr/bin or /usr/local/bin; install one" \
            "(apt-get install python3) or name it with --python PATH"
    fi
    [ -x "$PYTHON" ] || PYTHON=$(command -v "$PYTHON") || die "--python $PYTHON: not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11"
    local base
    base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
    case "$base" in
        /home/*|/root|/root/*)
            if [ -z "$PREFIX" ]; then
                die "$PYTHON lives in $base, which the service cannot see (ProtectHome=yes);" \
                    "use a system Python: --python /usr/bin/python3"
            fi
            say "warning: $PYTHON lives under $base: fine for --prefix, not for the service" ;;
    esac
}

# find_uv: uv exports the workspace's lock (which keeps the embedded-model packages'
# unused heavy dependencies out) and builds the wheels. Bootstrapped when missing.
find_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV=$(command -v uv)
        return 0
    fi
    say "uv not found: installing it into a temporary environment"
    "$PYTHON" -m venv "$TMP_DIR/tools" \
        || die "cannot create a virtual environment with $PYTHON: apt-get install python3-venv"
    "$TMP_DIR/tools/bin/python" -m pip install --quiet uv || die "pip install uv failed"
    UV=$TMP_DIR/tools/bin/uv
}

install_python() {
    if [ "$NO_VENV" -eq 1 ]; then
        say "skipped (--no-venv): Python environment in $VENV_DIR"
        return 0
    fi
    if [ ! -f "$SOURCE_DIR/core/pyproject.toml" ] || [ ! -f "$SOURCE_DIR/uv.lock" ]; then
        die "$SOURCE_DIR is not an npu-proxy checkout (no core/pyproject.toml or uv.lock)"
    fi
    choose_python
    # Every distribution in the checkout: the core and each plugin (not the examples).
    local dirs=("$SOURCE_DIR/core") dir names=()
    for dir in "$SOURCE_DIR"/plugins/*/; do
        if [ -f "$dir/pyproject.toml" ]; then dirs+=("${dir%/}"); fi
    done
    for dir in "${dirs[@]}"; do
        names+=("$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/pyproject.toml" | head -n 1)")
    done
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would build wheels of ${names[*]} from $SOURCE_DIR"
        say "would install them with their locked dependencies (uv.lock) into $VENV_DIR" \
            "using $PYTHON"
        return 0
    fi
    find_uv
    export UV_PYTHON_DOWNLOADS=never
    local reqs=$TMP_DIR/requirements.txt package_args=() name
    for name in "${names[@]}"; do package_args+=(--package "$name"); done
    "$UV" export --project "$SOURCE_DIR" --frozen --no-dev --no-emit-workspace --no-hashes \
        --no-header --no-annotate --quiet "${package_args[@]}" -o "$reqs"
    for dir in "${dirs[@]}"; do
        "$UV" build --quiet --wheel --out-dir "$TMP_DIR/wheels" "$dir"
    done
    printf '%s\n' "$TMP_DIR"/wheels/*.whl >>"$reqs"
    ensure_dir "$OPT_DIR" 0755
    "$UV" venv --quiet --allow-existing --python "$PYTHON" "$VENV_DIR"
    # sync makes the environment exactly the lock plus our wheels; the workspace
    # packages are reinstalled because a checkout changes without a version bump.
    # Bytecode is compiled here: the service user cannot write __pycache__ in the venv,
    # and without it every start compiles FastAPI and pydantic from source again.
    local reinstall=()
    for name in "${names[@]}"; do reinstall+=(--reinstall-package "$name"); done
    "$UV" pip sync --quiet --compile-bytecode --python "$VENV_DIR/bin/python" "${reinstall[@]}" "$reqs"
    "$VENV_DIR/bin/npu-proxy" --version >/dev/null || die "the installed npu-proxy does not start"
    say "installed $("$VENV_DIR/bin/npu-proxy" --version) into $VENV_DIR"
    CHANGED=1
}

# --- install and uninstall -----------------------------------------------------------

systemd_running() { [ -d /run/systemd/system ]; }

start_service() {
    if [ "$SYSTEM" -eq 0 ]; then
        system systemctl daemon-reload
        system systemctl enable "$SERVICE.service"
        return 0
    fi
    if ! systemd_running; then
        say "systemd is not running here: start it later with systemctl enable --now $SERVICE"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable --quiet "$SERVICE.service"
    if [ "$NO_START" -eq 1 ]; then
        say "enabled $SERVICE (not started: --no-start)"
    elif [ "$CHANGED" -eq 1 ]; then
        systemctl restart "$SERVICE.service"
        say "restarted $SERVICE; logs: journalctl -u $SERVICE -f"
    else
        systemctl start "$SERVICE.service"
        say "$SERVICE is running; nothing changed"
    fi
}

do_install() {
    ensure_user
    ensure_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"
    ensure_dir "$(dirname "$UNIT_FILE")" 0755
    # The state directory is the service user's own; systemd (StateDirectory=) would
    # create it too, but the installer makes it so the models can be copied in first.
    ensure_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$MODELS_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$CACHE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    install_python
    write_env_file
    unit_content | write_file "$UNIT_FILE" 0644
    verify_unit
    start_service
    if [ "$DRY_RUN" -eq 1 ]; then say "dry run: nothing was changed"; fi
}

do_uninstall() {
    if [ "$SYSTEM" -eq 0 ]; then
        system systemctl disable --now "$SERVICE.service"
    elif systemd_running; then
        # Not installed (or already disabled) is fine: uninstalling twice is not an error.
        systemctl disable --now "$SERVICE.service" 2>/dev/null || true
    else
        say "systemd is not running here: nothing to stop"
    fi
    remove "$UNIT_FILE" "$OPT_DIR"
    if [ "$SYSTEM" -eq 1 ] && systemd_running; then systemctl daemon-reload; fi
    if [ "$PURGE" -eq 1 ]; then
        remove "$ETC_DIR" "$STATE_DIR" "$CACHE_DIR"
        if [ "$SYSTEM" -eq 1 ] && getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER"
            say "removed user $SERVICE_USER"
        elif [ "$SYSTEM" -eq 0 ]; then
            say "skipped ($SKIP_REASON): userdel $SERVICE_USER"
        fi
    else
        say "kept $MODELS_DIR and $ENV_FILE (remove them too with --uninstall --purge)"
    fi
    if [ "$DRY_RUN" -eq 1 ]; then say "dry run: nothing was changed"; fi
}

TMP_DIR=$(mktemp -d)
if [ "$UNINSTALL" -eq 1 ]; then do_uninstall; else do_install; fi
