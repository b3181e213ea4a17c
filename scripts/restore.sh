#!/usr/bin/env bash
# Restore a dump made by scripts/backup.sh into DATABASE_URL. Destructive: the tables in the
# dump are dropped and recreated. Stop the api, worker and scheduler first.
#
#   DATABASE_URL=postgresql://... scripts/restore.sh --yes backups/birthday_scheduler_X.sql.gz
#
# Asks nothing (it runs in CI and cron jobs with no terminal); --yes is the confirmation.
# The restore runs in one transaction: it applies completely or not at all.
set -euo pipefail

usage() {
    echo "usage: DATABASE_URL=postgresql://... $0 --yes FILE.sql.gz" >&2
    exit 2
}

# Hide credentials in anything psql prints about a connection string (user:password@).
redact() {
    sed -E 's#(postgres(ql)?://)[^@/[:space:]]*@#\1***@#g'
}

fail() {
    echo "restore.sh: $*" >&2
    exit 1
}

confirmed=false
file=""
for arg in "$@"; do
    case "$arg" in
        --yes) confirmed=true ;;
        -h | --help) usage ;;
        -*) echo "restore.sh: unknown option $arg" >&2; usage ;;
        *)
            [[ -z "$file" ]] || usage
            file="$arg"
            ;;
    esac
done

[[ -n "$file" ]] || usage
[[ -n "${DATABASE_URL:-}" ]] || fail "DATABASE_URL is not set; refusing to run"
[[ "$confirmed" == true ]] || fail "this replaces the database's tables; re-run with --yes"
[[ -f "$file" ]] || fail "no such file: $file"
command -v psql >/dev/null || fail "psql not found (install the PostgreSQL client)"
gzip -t "$file" 2>/dev/null || fail "$file is not a valid gzip file"

if ! gunzip -c "$file" \
    | psql --quiet --no-psqlrc --single-transaction -v ON_ERROR_STOP=1 \
        --dbname="$DATABASE_URL" 2> >(redact >&2) >/dev/null; then
    fail "restore failed; the transaction was rolled back and the database is unchanged"
fi
echo "restored $file"
