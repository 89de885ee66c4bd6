#!/usr/bin/env bash
# Installs the real Prometheus and Alertmanager that tests/ops/ runs against (Debian's
# `prometheus` and `prometheus-alertmanager`). Idempotent and quiet when already installed.
# Debian's packages start system services on 9090/9093; the tests use private ports and
# their own processes, so the services are stopped here (they are not needed).
set -euo pipefail
# kubectl (tests/ops/test_k8s.py: `kubectl kustomize deploy/k8s`) is not installed here:
# Debian bookworm has only kubernetes-client 1.20 (kustomize v2, too old for the base), and
# this machine's image carries a current kubectl. Say so when it is missing.
command -v kubectl >/dev/null 2>&1 \
  || echo "install-ops: kubectl missing; tests/ops/test_k8s.py will skip (fail under CI=true)" >&2
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-ops: ${need[*]} missing and not root; the Prometheus tests will skip" \
       "(fail under CI=true)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-ops: installing ${need[*]} (Debian packages)" >&2
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
