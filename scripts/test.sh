#!/usr/bin/env bash
# The test suite as the README's Quick start and CI (.ci/run) run it: what the tests need, the linters, pytest.
# Run it in the project's environment (pip install -e ".[test]"); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/site/test_site.py drives Debian's chromium through Playwright (never `playwright install`: no browser download).
browser="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$browser" ]; then
    echo "scripts/test.sh: no browser at $browser; installing Debian's chromium with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q && apt-get install -y -q chromium
    elif command -v sudo >/dev/null; then
        sudo apt-get update -q && sudo apt-get install -y -q chromium
    else
        echo "scripts/test.sh: need root or sudo to run: apt-get install -y chromium" >&2
        exit 1
    fi
    if [ ! -x "$browser" ]; then
        echo "scripts/test.sh: chromium is installed as /usr/bin/chromium, not $browser; unset CHROMIUM" >&2
        exit 1
    fi
fi
ruff check .
ruff format --check .
python -m pytest --durations=25 "$@"  # the slowest tests named in every run: CI must stay well under 30 minutes
