#!/usr/bin/env bash
# An image of an application on a base (rootfs/base.sh): the base's tree, the agent,
# the kernel modules and the author's code in /app.
#
#   rootfs/image.sh BASE_DIR CODE IMAGE_CONFIG OUT
#
# CODE is a directory or a .zip (the local form of codeArtifact.uri). The agent is
# this checkout's x86_64 build (AGENT= picks another); kernels are shared under
# build/kernel (KERNEL_CACHE=). x86_64 only, as the bases are.
set -euo pipefail
[ $# = 4 ] || { echo "usage: rootfs/image.sh BASE_DIR CODE IMAGE_CONFIG OUT" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${ARCH:-x86_64}" != x86_64 ]; then
  echo "image: images on a base are x86_64 only, not ARCH=$ARCH" >&2
  exit 2
fi
AGENT=${AGENT:-$root/target/x86_64-unknown-linux-musl/release/microvm-agent}
[ -x "$AGENT" ] || { echo "image: no agent at $AGENT (make build)" >&2; exit 2; }
export ARCH=x86_64 KERNEL_CACHE=${KERNEL_CACHE:-$root/build/kernel}
BASE=$1 exec "$root/rootfs/build.sh" "$AGENT" "$2" "$3" "$4"
