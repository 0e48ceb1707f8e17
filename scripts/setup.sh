#!/usr/bin/env bash
# Install what building and testing need, idempotently, on a fresh Debian 12 machine.
set -euo pipefail
need_apt=()
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v file >/dev/null || need_apt+=(file)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
echo "setup: ok"
