#!/usr/bin/env bash
# Installs what the browser test (tests/e2e/test_gateway_browser.py) drives: Debian's
# Chromium from apt, and the Playwright Python package into the project's venv.
#
#     scripts/install-browser.sh            # run from the repository root (make does)
#
# Why this script exists: Playwright's own `playwright install` downloads a browser build
# from a CDN, which this project never does (DESIGN.md §4: package registries only), so
# the test launches the distribution's /usr/bin/chromium through `executable_path`.
# Idempotent: apt runs only when /usr/bin/chromium is missing, pip only when playwright
# does not import.
set -euo pipefail

VENV="${VENV:-.venv}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

if ! "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
    # playwright's requirements (greenlet, pyee) never touch torch.
    "$VENV/bin/pip" install playwright
fi

# (not `chromium --version`: Debian's wrapper script prints a spurious warning with it)
dpkg-query -W -f='chromium ${Version}\n' chromium 2>/dev/null || echo "chromium at /usr/bin/chromium"
"$VENV/bin/python" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
