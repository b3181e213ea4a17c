#!/usr/bin/env bash
# Install the system tools the test suite and `make bench` run, from Debian packages, when
# they are missing.
#
#   scripts/ensure-tools.sh        (run by `make test`, `make bench` and `make tools`)
#
# Silent and instant when every tool is on PATH. Otherwise installs the packages that provide
# the missing ones with apt-get, non-interactively, as root (or through password-less sudo).
# When it cannot (not root, no apt-get, no network), it prints one line saying what to install
# and exits non-zero, so the suite does not start only to fail on a missing binary.
#
# PostgreSQL and RabbitMQ (and the psql / rabbitmqctl that come with them) are services the
# machine provides; .ci/run checks that they answer.
set -euo pipefail

# One line per tool: <command on PATH> <Debian package> <what needs it>.
TOOLS=(
    "promtool   prometheus  tests/deploy: checks the alert rules and runs their unit tests"
    "prometheus prometheus  tests/acceptance/test_prometheus_scrape.py: scrapes the processes"
    "chromium   chromium    tests/browser: the operator console driven by Playwright, headless"
    "wrk        wrk         make bench and tests/acceptance/test_bench_runs.py: the API under load"
)

say() { printf 'ensure-tools: %s\n' "$*" >&2; }
# On PATH and executable (bash's `command -v` also reports a file it cannot run).
found() { local path; path=$(command -v "$1") && [ -x "$path" ]; }

missing_commands=()
packages=()
for entry in "${TOOLS[@]}"; do
    read -r tool package _ <<<"$entry"
    if ! found "$tool"; then
        missing_commands+=("$tool")
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    fi
done
[ "${#packages[@]}" -eq 0 ] && exit 0

wanted="${missing_commands[*]} (Debian: apt-get install --no-install-recommends ${packages[*]})"

if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)  # a no-op prefix, so the commands below read the same either way
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    say "missing ${wanted}: not root and no password-less sudo; install them as root, then run make test again"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${wanted}: no apt-get on this machine; install them by hand, then run make test again"
    exit 1
fi

say "installing ${packages[*]} for ${missing_commands[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    say "could not install ${packages[*]} (no network or no package mirror?); last lines of apt-get:"
    tail -n 5 "$log" >&2
    exit 1
fi
for tool in "${missing_commands[@]}"; do
    if ! found "$tool"; then
        say "installed ${packages[*]}, but ${tool} is still not on PATH"
        exit 1
    fi
done
say "installed ${packages[*]}"
