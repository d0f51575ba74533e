#!/bin/sh
# The official postgres image's first start, for the stand-in: `postgres` with an empty PGDATA first makes a cluster
# whose superuser is POSTGRES_USER (default postgres) with POSTGRES_PASSWORD, password authentication from other
# hosts, and the database POSTGRES_DB (default POSTGRES_USER). A PGDATA that has a cluster is used as it is; any
# other command (psql, pg_isready) runs as it is.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD is empty: set it (the official image refuses to start without it as well)" >&2
        exit 1
    fi
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\";" | postgres --single -j -D "$PGDATA" postgres >/dev/null
    fi
    echo "initialised $PGDATA: user $user, database $database" >&2
fi
exec "$@"
