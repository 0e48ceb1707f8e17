#!/usr/bin/env bash
# Install what building and testing need, idempotently, on a fresh Debian 12 machine.
set -euo pipefail
need_apt=()
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v file >/dev/null || need_apt+=(file)
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v qemu-system-aarch64 >/dev/null || need_apt+=(qemu-system-arm)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
# Snapshots: per-VM disk overlays (qemu-img), compressed memory files, the initramfs.
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
# ring (TLS for the AWS SDK) compiles C for the musl target.
command -v x86_64-linux-musl-gcc >/dev/null || need_apt+=(musl-tools)
# aarch64 guests: Debian 12's cross gcc (12.2, pinned by the release) compiles that C
# and links; Rust brings its own musl (.cargo/config.toml).
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/include ] || need_apt+=(libc6-dev-arm64-cross)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
# Base images (rootfs/base.sh): a Debian root from this machine's mirror; code
# artifacts may be .zip files.
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
command -v unzip >/dev/null || need_apt+=(unzip)
# The tests drive a guest's terminal (exec with a tty) through tmux.
command -v tmux >/dev/null || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The machine image may ship a newer qemu-utils (a backport) that Breaks the
  # release's qemu-system-common: QEMU's parts must be one version, and the one
  # verified here (../shared/notes) is the release's, so qemu-utils follows it.
  qemu=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$qemu" ] && [ "$qemu" != "(none)" ] && [ -n "$have" ] && [ "$have" != "$qemu" ]; then
    need_apt+=("qemu-utils=$qemu")
  fi
  apt-get install -y -qq --allow-downgrades "${need_apt[@]}"
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed | grep -qx $t || rustup target add $t
done
# The cross compiler is Debian 12's, 12.2.0 (the release fixes the upstream version;
# only Debian revisions move), and the aarch64-linux-gnu-gcc on PATH is that package's.
cross=$(dpkg-query -W -f='${Version}' gcc-12-aarch64-linux-gnu 2>/dev/null || true)
case $cross in
  12.2.0-*) ;;
  *) echo "setup: gcc-12-aarch64-linux-gnu is '${cross:-not installed}', not Debian 12's 12.2.0" >&2; exit 1 ;;
esac
gcc_path=$(readlink -f "$(command -v aarch64-linux-gnu-gcc)")
dpkg -S "$gcc_path" >/dev/null 2>&1 || { echo "setup: $gcc_path does not come from a Debian package" >&2; exit 1; }
# The vhost-user vsock backend for real guests (pure Rust, pinned), into .tools/.
root=$(cd "$(dirname "$0")/.." && pwd)
if ! "$root/.tools/bin/vhost-device-vsock" --version >/dev/null 2>&1; then
  cargo install --locked --quiet vhost-device-vsock@0.3.0 --root "$root/.tools"
fi
# moto: a real CloudWatch Logs wire-protocol server for the log tests; the AWS CLI
# (v1, with `aws lambda-microvms` from botocore's model) and boto3 that drive
# `microvm-local serve` in the endpoint tests. All pinned.
if ! "$root/.venv/bin/moto_server" --help >/dev/null 2>&1 ||
  ! "$root/.venv/bin/aws" --version 2>&1 | grep -q '^aws-cli/1\.46\.3 '; then
  python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5' 'awscli==1.46.3'
fi
# apt-get download (the kernel and the toolbox's busybox for images) needs fresh
# package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 ||
  ! apt-cache show busybox-static >/dev/null 2>&1; then
  apt-get update -qq
fi
echo "setup: ok"
