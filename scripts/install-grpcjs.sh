#!/usr/bin/env bash
# Installs @grpc/grpc-js (a gRPC implementation nobody here wrote) for the interop tests,
# tests/interop/test_grpcjs.py, into a project-local, gitignored directory: .cache/grpcjs
# (or $MESHKIT_GRPCJS_DIR), pinned to one version. Needs node and npm; the npm
# registry is reached only when that version is not installed there yet. Idempotent and
# quiet when already installed.
set -euo pipefail
version=1.14.7
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MESHKIT_GRPCJS_DIR:-$root/.cache/grpcjs}"
installed="$dir/node_modules/@grpc/grpc-js/package.json"
if [ -f "$installed" ] && grep -q "\"version\": \"$version\"" "$installed"; then
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-grpcjs: node or npm missing; the grpc-js interop tests will skip" \
       "(fail under CI=true)" >&2
  exit 0
fi
mkdir -p "$dir"
echo "install-grpcjs: installing @grpc/grpc-js@$version into $dir" >&2
npm install --no-audit --no-fund --save-exact --silent --prefix "$dir" "@grpc/grpc-js@$version" >/dev/null
