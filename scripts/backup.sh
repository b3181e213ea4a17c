#!/usr/bin/env bash
# Back up the birthday-scheduler database to a gzipped, restorable SQL dump.
#
#   DATABASE_URL=postgresql://... scripts/backup.sh
#
# Environment:
#   DATABASE_URL    required; the database to dump (never printed: it may hold a password)
#   BACKUP_DIR      where dumps go (default ./backups; created if missing)
#   RETENTION_DAYS  dumps of ours older than this many days are deleted after a good backup
#                   (default 30)
#
# Prints the path of the new dump on stdout. On failure: a message on stderr, exit status
# non-zero, and no file left behind (the dump is written under a temporary name and only
# renamed once it is complete and verified).
set -euo pipefail

PREFIX="birthday_scheduler_"

fail() {
    echo "backup.sh: $*" >&2
    exit 1
}

# Hide credentials in anything a tool prints about a connection string (user:password@).
redact() {
    sed -E 's#(postgres(ql)?://)[^@/[:space:]]*@#\1***@#g'
}

[[ -n "${DATABASE_URL:-}" ]] || fail "DATABASE_URL is not set; refusing to run"
command -v pg_dump >/dev/null || fail "pg_dump not found (install the PostgreSQL client)"

BACKUP_DIR="${BACKUP_DIR:-./backups}"
RETENTION_DAYS="${RETENTION_DAYS:-30}"
[[ "$RETENTION_DAYS" =~ ^[0-9]+$ ]] || fail "RETENTION_DAYS must be a whole number of days"

mkdir -p "$BACKUP_DIR" || fail "cannot create BACKUP_DIR $BACKUP_DIR"

timestamp="$(date -u +%Y%m%d_%H%M%S)"
final="$BACKUP_DIR/${PREFIX}${timestamp}.sql.gz"
[[ ! -e "$final" ]] || fail "$final already exists; not overwriting it"
partial="$(mktemp "$BACKUP_DIR/.${PREFIX}${timestamp}.XXXXXX.partial")"
errors="$(mktemp)"
cleanup() {
    rm -f "$partial" "$errors"
}
trap cleanup EXIT

# --clean --if-exists: the dump drops what it recreates, so it restores onto an existing
# database. --no-owner: it restores as whichever role runs the restore.
if ! pg_dump --clean --if-exists --no-owner --dbname="$DATABASE_URL" 2>"$errors" \
    | gzip -c >"$partial"; then
    redact <"$errors" >&2
    fail "pg_dump failed; no backup written"
fi

gzip -t "$partial" 2>/dev/null || fail "the compressed dump does not verify (gzip -t)"
# An empty or truncated stream still gzips fine: insist on a complete pg_dump script.
# (tail reads the whole stream, so no early exit trips pipefail with SIGPIPE.)
gunzip -c "$partial" | tail -n 20 | grep -q '^-- PostgreSQL database dump complete' \
    || fail "the dump is empty or incomplete"

mv "$partial" "$final"

# Retention only after a verified backup, and only our own files: a failing backup job must
# never eat the last good dumps, and other files in the directory are not ours to delete.
find "$BACKUP_DIR" -maxdepth 1 -type f -name "${PREFIX}*.sql.gz" -mtime "+$RETENTION_DAYS" \
    -delete

echo "$final"
