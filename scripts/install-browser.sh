#!/usr/bin/env bash
# Installs the real headless browser that tests/observability/test_dashboard.py drives
# (Debian's `chromium`; the test reaches it through playwright's Python package with
# executable_path, so playwright downloads no browser of its own). Idempotent and quiet
# when already installed.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser: chromium missing and not root; the dashboard browser test will" \
       "skip (fail under CI=true)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-browser: installing chromium (Debian package)" >&2
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
