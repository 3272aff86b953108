#!/usr/bin/env bash
# A shared MLflow tracking server for a team: PostgreSQL as the backend store, a shared directory (or an
# s3:// / NFS location) as the artifact store, the server proxying artifact uploads and downloads.
#
#   scripts/team_tracking.sh start DIR [ARTIFACTS]   # prints: export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
#   scripts/team_tracking.sh stop DIR
#
# DIR holds the PostgreSQL cluster (DIR/pgdata, initialised on the first start, reused afterwards), its
# socket, the logs and DIR/team.env (ports, process ids, the tracking URI). ARTIFACTS is MLflow's
# --artifacts-destination (default DIR/artifacts). Debian's postgresql package is installed when missing.
# As root, PostgreSQL runs as the `postgres` system user (it refuses to run as root), so DIR must be
# reachable by that user. Environment: PYTHON (the interpreter with mlflow and psycopg2, default python3),
# PG_BIN (PostgreSQL's bin directory), MLFLOW_HOST (default 127.0.0.1), MLFLOW_WORKERS, TEAM_WAIT_S.
set -euo pipefail

PY=${PYTHON:-python3}
HOST=${MLFLOW_HOST:-127.0.0.1}
WAIT_S=${TEAM_WAIT_S:-180}

die() { echo "error: $*" >&2; exit 2; }
say() { echo "[team_tracking] $*" >&2; }

usage() { die "usage: $0 start DIR [ARTIFACTS] | stop DIR"; }

is_root() { [ "$(id -u)" = "0" ]; }

# Commands that touch the cluster run as its owner: `postgres` when we are root, else ourselves.
as_pg() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install_postgresql() {
    [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] && return 0
    say "installing Debian's postgresql package"
    local sudo=""
    is_root || sudo="sudo"
    # No cluster of the package's own (/var/lib/postgresql/<v>/main): this script makes its own.
    $sudo mkdir -p /etc/postgresql-common
    [ -f /etc/postgresql-common/createcluster.conf ] ||
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold postgresql >/dev/null
    [ -x "$(pg_bin)/initdb" ] || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
}

# DIR/team.env: what `stop` and the users need (from the caller's locals).
write_env() {
    cat >"$env_file" <<EOF
PG_BIN=$bin
PG_PORT=$PG_PORT
PG_PID=$pg_pid
MLFLOW_PORT=$MLFLOW_PORT
MLFLOW_PID=$MLFLOW_PID
BACKEND_STORE_URI=$backend
ARTIFACTS_DESTINATION=$artifacts
MLFLOW_TRACKING_URI=$uri
EOF
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

start() {
    local dir=$1 artifacts=${2:-}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    artifacts=${artifacts:-$dir/artifacts}
    case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts"; artifacts=$(cd "$artifacts" && pwd) ;; esac
    local env_file=$dir/team.env pgdata=$dir/pgdata sock=$dir/pgsock
    local PG_PORT="" MLFLOW_PORT="" MLFLOW_PID=""
    if [ -f "$env_file" ]; then
        # shellcheck disable=SC1090
        . "$env_file"
        alive "$MLFLOW_PID" && die "$dir: a tracking server is already running (pid $MLFLOW_PID); stop it first"
    fi
    "$PY" -c "import mlflow, psycopg2" 2>/dev/null || die "$PY cannot import mlflow and psycopg2; set PYTHON"
    install_postgresql
    local bin
    bin=$(pg_bin)

    if is_root; then
        mkdir -p "$pgdata" "$sock"
        chown postgres: "$pgdata" "$sock"
        chmod 700 "$pgdata"
        as_pg test -w "$pgdata" ||
            die "$dir: not reachable by the postgres user (a parent directory is not searchable by others)"
    else
        mkdir -p "$pgdata" "$sock"
        chmod 700 "$pgdata"
    fi

    PG_PORT=${PG_PORT:-$(free_port)}
    MLFLOW_PORT=${MLFLOW_PORT:-$(free_port)}
    local fresh=0
    if [ ! -f "$pgdata/PG_VERSION" ]; then
        fresh=1
        say "initialising a PostgreSQL cluster in $pgdata ($("$bin/postgres" --version))"
        as_pg "$bin/initdb" -D "$pgdata" --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
            >"$dir/initdb.log" 2>&1 || die "initdb failed, see $dir/initdb.log"
        # Only TCP on the loopback interface and a socket in DIR: no clash with a system PostgreSQL.
        as_pg tee -a "$pgdata/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
EOF
    fi
    touch "$dir/postgres.log"
    is_root && chown postgres: "$dir/postgres.log"
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$pgdata" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
        die "PostgreSQL did not start, see $dir/postgres.log"
    local pg_pid uri="http://$HOST:$MLFLOW_PORT" backend="postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow"
    pg_pid=$(head -n 1 "$pgdata/postmaster.pid")
    MLFLOW_PID=""
    write_env  # from here on, `stop DIR` can end what was started even if a later step fails

    # The password lives only in a pgpass file (libpq reads it), never on a command line.
    local pgpass=$dir/pgpass
    if [ "$fresh" = 1 ]; then
        local password
        password=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
        as_pg "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PG_PORT" -d postgres \
            -c "CREATE ROLE mlflow LOGIN PASSWORD '$password'" -c "CREATE DATABASE mlflow OWNER mlflow" \
            >/dev/null || die "could not create the mlflow database and user"
        (umask 077 && echo "127.0.0.1:$PG_PORT:mlflow:mlflow:$password" >"$pgpass")
    fi

    say "starting mlflow server on $HOST:$MLFLOW_PORT (backend $backend, artifacts $artifacts)"
    local workers=()
    [ -n "${MLFLOW_WORKERS:-}" ] && workers=(--workers "$MLFLOW_WORKERS")
    # Its own process group (job control), so that stop ends the server and its workers by this one id.
    set -m
    PGPASSFILE=$pgpass "$PY" -m mlflow server --backend-store-uri "$backend" \
        --artifacts-destination "$artifacts" --host "$HOST" --port "$MLFLOW_PORT" "${workers[@]}" \
        >"$dir/mlflow.log" 2>&1 </dev/null &
    MLFLOW_PID=$!
    set +m
    write_env
    # The first start creates MLflow's tables (its migrations); wait for /health.
    if ! "$PY" - "$uri" "$MLFLOW_PID" "$WAIT_S" <<'EOF'
import os, sys, time, urllib.request
uri, pid, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + wait
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"mlflow server (pid {pid}) exited")
    try:
        with urllib.request.urlopen(uri + "/health", timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(f"{uri}/health did not answer within {wait:.0f} s")
EOF
    then
        tail -n 20 "$dir/mlflow.log" >&2
        stop "$dir"
        die "the mlflow server did not come up, see $dir/mlflow.log"
    fi
    say "ready: $uri (postgres pid $pg_pid, mlflow pid $MLFLOW_PID)"
    echo "export MLFLOW_TRACKING_URI=$uri"
}

stop() {
    local dir=$1
    local env_file=$dir/team.env
    [ -f "$env_file" ] || { say "$dir: no team.env, nothing to stop"; return 0; }
    local PG_BIN="" PG_PID="" MLFLOW_PID=""
    # shellcheck disable=SC1090
    . "$env_file"
    if alive "$MLFLOW_PID"; then
        say "stopping mlflow server (pid $MLFLOW_PID and its workers)"
        kill -TERM -- "-$MLFLOW_PID" 2>/dev/null || kill -TERM "$MLFLOW_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do alive "$MLFLOW_PID" || break; sleep 0.5; done
        alive "$MLFLOW_PID" && kill -KILL -- "-$MLFLOW_PID" 2>/dev/null || true
    fi
    if alive "$PG_PID"; then
        say "stopping PostgreSQL (pid $PG_PID)"
        as_pg "$PG_BIN/pg_ctl" -D "$dir/pgdata" -m fast -w -t 60 stop >/dev/null || kill -TERM "$PG_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do alive "$PG_PID" || break; sleep 0.5; done
    fi
    if alive "$MLFLOW_PID" || alive "$PG_PID"; then
        die "could not stop pid $MLFLOW_PID / $PG_PID"
    fi
    # Forget the ids: a later stop must not signal an unrelated process that reused one.
    sed -i -e 's/^MLFLOW_PID=.*/MLFLOW_PID=/' -e 's/^PG_PID=.*/PG_PID=/' "$env_file"
}

[ $# -ge 2 ] || usage
case "$1" in
    start) start "$2" "${3:-}" ;;
    stop) stop "$2" ;;
    *) usage ;;
esac
