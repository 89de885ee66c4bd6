#!/usr/bin/env bash
# Install etcd (server and etcdctl) from Debian for the etcd registry tests and benchmark.
# Idempotent and quiet when etcd is already there. The tests start their own etcd processes
# on free loopback ports with private data directories; they never use a system etcd, so the
# system service the package may enable is stopped and disabled here (it would hold 2379).
set -euo pipefail
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-etcd: etcd is missing and apt-get cannot be run as root here;" \
       "install the Debian packages etcd-server and etcd-client" >&2
  exit 0  # the tests skip (or fail under CI=true) with the reason
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting its service during the install (policy-rc.d, 101 = deny).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
if ! apt-get install -y -qq etcd-server etcd-client >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "install-etcd: $(etcd --version | head -1)"
