#!/usr/bin/env bash
# Turn an application plus the agent into a bootable ext4 image, without root
# privileges or mounts (mkfs.ext4 -d). Outputs in $OUT: rootfs.ext4, vmlinuz.
#
#   rootfs/build.sh AGENT APP IMAGE_CONFIG OUT
#
# APP is a static binary (copied to /app/) or a directory (copied as /app). The kernel
# and its modules come from one pinned Debian ABI package, extracted, never installed.
#
# BASE=DIR (a rootfs/base.sh output: DIR/root, DIR/base.json) builds on a Debian base
# with a language runtime instead of an empty tree: the stage starts as a copy of
# DIR/root (owners and modes kept, so it needs root), APP may also be a script or
# directory for the base's runtime, and the image's size is computed (used size +25%
# +64 MiB) unless SIZE is given. APP may be a .zip (the local form of the service's
# codeArtifact.uri), unpacked to /app with its modes (unzip keeps them). A .zip's or,
# with BASE, a directory's files are made root's, readable by all and writable by
# root only: the application (which may run as another user) cannot change its code.
# manifest.json then also records "base" and "baseRuntime" (from base.json), and,
# with or without BASE, "minimumMemoryInMiB" when the image config has
# resources[0].minimumMemoryInMiB (the host gives the guest at least that).
#
# TOOLBOX=busybox adds a shell and the usual tools: Debian 12's static busybox
# (busybox-static, pinned by version and checksum like the kernel, downloaded and
# extracted into the same cache) as /bin/busybox, and a link to it for each applet
# (sh, ls, ps, mount, stty, tar, vi, ...) at the path busybox gives it, unless a file
# of that name is already in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin,
# /sbin or /bin: an image's own tools (a base's /bin/sh, the agent's /sbin/init) are
# never replaced, and an image with its own /bin/busybox keeps it and gets no links.
# /etc/passwd and /etc/group get root (home /root) and nobody:nogroup (65534) when
# they lack them (created if absent). manifest.json records "toolbox" (package=version)
# and "toolboxApplets" (the links made). The applet list comes from the package built
# for this machine, same version, run here: a foreign busybox never runs.
#
# ARCH (x86_64, the default, or aarch64) picks the kernel package; the agent must be
# built for it. The image records its architecture in manifest.json (the service
# model's names, X86_64 or ARM_64), so the runner picks the emulator by itself.
#
# Also initrd.cpio (newc, uncompressed, built without root and without device nodes):
# the agent's stage 1. /init is the same agent binary; it loads the modules listed in
# /etc/microvm/initrd-modules (virtio_blk is a module in Debian's cloud kernel), mounts
# microvm.root=DEV (a virtio-blk root, which QEMU can migrate, unlike NVMe) and
# switches to it. rootfs.ext4 boots either way: NVMe with root=, or virtio-blk
# through the initramfs.
set -euo pipefail
agent=$1 app=$2 cfg=$3 out=$4
build_started=$(date +%s%N)
ARCH=${ARCH:-x86_64}
case $ARCH in
  x86_64) debarch=amd64 model=X86_64 machine='x86-64' ;;
  aarch64) debarch=arm64 model=ARM_64 machine='ARM aarch64' ;;
  *) echo "rootfs: ARCH is x86_64 or aarch64, not $ARCH" >&2; exit 2 ;;
esac
BASE=${BASE:-}
TOOLBOX=${TOOLBOX:-}
case $TOOLBOX in
  '' | busybox) ;;
  *) echo "rootfs: TOOLBOX is busybox or empty, not $TOOLBOX" >&2; exit 2 ;;
esac
# A field of a JSON file, "" when absent: json FILE EXPRESSION (over the document d).
json() {
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); v = eval(sys.argv[2], {"d": d}); print("" if v is None else v)' "$1" "$2"
}
if [ -n "$BASE" ]; then
  BASE=${BASE%/}
  if [ ! -f "$BASE/base.json" ] || [ ! -d "$BASE/root" ]; then
    echo "rootfs: BASE=$BASE is not a rootfs/base.sh output (no base.json or root/)" >&2; exit 2
  fi
  base_name=$(json "$BASE/base.json" 'd["base"]')
  base_runtime=$(json "$BASE/base.json" 'd["runtime"]')
  for field in sizeBytes buildSeconds createdAt packagesSha256; do
    [ -n "$(json "$BASE/base.json" "d.get('$field')")" ] ||
      { echo "rootfs: $BASE/base.json has no $field: rebuild the base (make -B base-...)" >&2; exit 2; }
  done
  base_arch=$(json "$BASE/base.json" 'd["architecture"]')
  if [ "$base_arch" != "$model" ]; then
    echo "rootfs: BASE=$BASE is an $base_arch base, not $model (ARCH=$ARCH)" >&2; exit 2
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "rootfs: BASE needs root: the base's files keep their owners" >&2; exit 2
  fi
fi
is_zip() { case ${1,,} in *.zip) [ -f "$1" ] ;; *) false ;; esac; }
checked=("$agent")
if [ -d "$app" ] || is_zip "$app"; then
  :
elif [ -n "$BASE" ] && ! file -L "$app" | grep -q ' ELF '; then
  : # a script for the base's interpreter
else
  checked+=("$app")
fi
for bin in "${checked[@]}"; do
  file -L "$bin" | grep -q "$machine" || { echo "rootfs: $bin is not an $ARCH binary: $(file -L "$bin")" >&2; exit 2; }
done
if is_zip "$app"; then
  command -v unzip >/dev/null || { echo "rootfs: unzip is missing (make setup)" >&2; exit 2; }
  # Every entry stays under /app: no absolute path, no "..", nothing written through
  # a symbolic link the archive itself makes (unzip runs as whoever builds).
  python3 - "$app" <<'EOF'
import stat, sys, zipfile
path = sys.argv[1]
try:
    entries = zipfile.ZipFile(path).infolist()
except (OSError, zipfile.BadZipFile) as e:
    sys.exit(f"rootfs: {path}: not a zip archive: {e}")
links = {e.filename.rstrip("/") for e in entries if stat.S_ISLNK(e.external_attr >> 16)}
for e in entries:
    name = e.filename.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/"):
        sys.exit(f"rootfs: {path}: {e.filename!r} would leave /app")
    parts = name.rstrip("/").split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            sys.exit(f"rootfs: {path}: {e.filename!r} is under the symbolic link {'/'.join(parts[:i])!r}")
EOF
fi
# The kernel: one Debian package, pinned by name, version and checksum (an ABI name
# alone lets the revision move). KERNEL_PKG (and KERNEL_VERSION) pick another; then
# no checksum is known, and the build says so.
PINNED_PKG=linux-image-6.1.0-56-cloud-$debarch
PINNED_VERSION=6.1.192-2
case $debarch in
  amd64) PINNED_SHA256=e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee ;;
  arm64) PINNED_SHA256=481ab54a27246579aadeb372315c56de02f2fe0cba4e09b387946269fff2f415 ;;
esac
KERNEL_PKG=${KERNEL_PKG:-$PINNED_PKG}
if [ "$KERNEL_PKG" = "$PINNED_PKG" ]; then
  KERNEL_VERSION=${KERNEL_VERSION:-$PINNED_VERSION}
fi
SIZE=${SIZE:-}
# virtio-pci and vsock are modules in Debian's cloud kernel; order matters.
MODULES=(
  kernel/drivers/virtio/virtio_ring.ko
  kernel/drivers/virtio/virtio.ko
  kernel/drivers/virtio/virtio_pci_legacy_dev.ko
  kernel/drivers/virtio/virtio_pci_modern_dev.ko
  kernel/drivers/virtio/virtio_pci.ko
  kernel/net/vmw_vsock/vsock.ko
  kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko
  kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko
  kernel/net/vmw_vsock/vsock_loopback.ko
  kernel/net/core/failover.ko
  kernel/drivers/net/net_failover.ko
  kernel/drivers/net/virtio_net.ko
)
# The initramfs's modules: what a virtio-blk root needs, in load order.
INITRD_MODULES=(
  kernel/drivers/virtio/virtio_ring.ko
  kernel/drivers/virtio/virtio.ko
  kernel/drivers/virtio/virtio_pci_legacy_dev.ko
  kernel/drivers/virtio/virtio_pci_modern_dev.ko
  kernel/drivers/virtio/virtio_pci.ko
  kernel/drivers/block/virtio_blk.ko
)

mkdir -p "$out"
# Images built side by side share one cache of extracted packages (the kernel's, the
# toolbox's).
cache=${KERNEL_CACHE:-$out/kernel}
hostarch=$(dpkg --print-architecture)
# apt-get's options for Debian architecture $1's packages, in the array apt. A
# foreign package is only downloaded: package lists for its architecture go to a
# private apt state under the cache (absolute: apt reads a relative Dir:: setting as
# relative to its parent, /var/lib/apt), with no dpkg status of its own, so the
# machine's apt and dpkg never learn of the architecture. Updated once per build.
apt_updated=
apt_for() {
  apt=(-o APT::Sandbox::User=root)
  if [ "$1" != "$hostarch" ]; then
    local state
    state=$(realpath -m "$cache")/apt-$1
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
    apt+=(-o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
      -o "Dir::State::status=/dev/null"
      -o "APT::Architecture=$1" -o "APT::Architectures::=$1")
    case " $apt_updated " in
      *" $1 "*) ;;
      *) apt-get -qq "${apt[@]}" update; apt_updated+=" $1" ;;
    esac
  fi
}
kdir=$cache/$KERNEL_PKG
if [ ! -f "$kdir/.extracted" ]; then
  rm -rf "$kdir" && mkdir -p "$kdir"
  apt_for "$debarch"
  want=$KERNEL_PKG${KERNEL_VERSION:+=$KERNEL_VERSION}
  if ! (cd "$kdir" && apt-get -q "${apt[@]}" download "$want" >/dev/null); then
    # Debian drops an ABI package at its next point release. CI must not quietly
    # build on another kernel: it stops; elsewhere the current one is used, loudly.
    current=$(apt-cache "${apt[@]}" depends "linux-image-cloud-$debarch" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -n "${CI:-}" ]; then
      echo "rootfs: $want is not downloadable (Debian's current one is $current): bump the pin in rootfs/build.sh" >&2
      exit 1
    fi
    echo "rootfs: WARNING: $want is not downloadable; using $current, unpinned (set KERNEL_PKG to choose)" >&2
    (cd "$kdir" && apt-get "${apt[@]}" download "$current" >/dev/null)
  elif [ "$want" = "$PINNED_PKG=$PINNED_VERSION" ]; then
    got=$(sha256sum "$kdir"/linux-image-*.deb | cut -d' ' -f1)
    if [ "$got" != "$PINNED_SHA256" ]; then
      echo "rootfs: $want has checksum $got, not the pinned $PINNED_SHA256" >&2
      rm -rf "$kdir"
      exit 1
    fi
  else
    echo "rootfs: $want has no pinned checksum" >&2
  fi
  dpkg-deb -x "$kdir"/linux-image-*.deb "$kdir/x"
  touch "$kdir/.extracted"
fi
release=$(ls "$kdir/x/lib/modules")
# The toolbox's package, pinned as the kernel is (one Debian version, a checksum per
# architecture), extracted into the cache once: fetch_toolbox DEBARCH sets tdir. If
# Debian has dropped the version, CI stops; elsewhere the current one is used, loudly.
TOOLBOX_PKG=busybox-static
TOOLBOX_VERSION=1:1.35.0-4+deb12u1+b1
fetch_toolbox() {
  local sum= want=$TOOLBOX_PKG=$TOOLBOX_VERSION got current
  case $1 in
    amd64) sum=3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744 ;;
    arm64) sum=732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5 ;;
  esac
  tdir=$cache/$TOOLBOX_PKG-$1
  [ "$(cat "$tdir/.extracted" 2>/dev/null)" = "$want" ] && return
  rm -rf "$tdir" && mkdir -p "$tdir"
  apt_for "$1"
  if (cd "$tdir" && apt-get -q "${apt[@]}" download "$want" >/dev/null); then
    got=$(sha256sum "$tdir"/*.deb | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
      echo "rootfs: $want ($1) has checksum $got, not the pinned ${sum:-(none for $1)}" >&2
      rm -rf "$tdir"
      exit 1
    fi
  else
    current=$(apt-cache "${apt[@]}" policy "$TOOLBOX_PKG" | awk '/Candidate:/ {print $2}')
    if [ -n "${CI:-}" ]; then
      echo "rootfs: $want ($1) is not downloadable (Debian's current one is $current): bump the pin in rootfs/build.sh" >&2
      exit 1
    fi
    echo "rootfs: WARNING: $want ($1) is not downloadable; using $current, unpinned" >&2
    (cd "$tdir" && apt-get -q "${apt[@]}" download "$TOOLBOX_PKG=$current" >/dev/null)
  fi
  dpkg-deb -x "$tdir"/*.deb "$tdir/x"
  echo "$want" > "$tdir/.extracted"
}
if [ -n "$TOOLBOX" ]; then
  # Which applets there are, and where each goes, is the source package's
  # configuration, the same for every architecture: the list comes from this
  # machine's build of the same version, which runs here.
  fetch_toolbox "$hostarch"
  list_dir=$tdir
  fetch_toolbox "$debarch"
  toolbox_version=$(dpkg-deb -f "$tdir"/*.deb Version)
  if [ "$(dpkg-deb -f "$list_dir"/*.deb Version)" != "$toolbox_version" ]; then
    echo "rootfs: $TOOLBOX_PKG for $hostarch and $debarch differ in version: the applet list would not be the image's" >&2
    exit 1
  fi
  applets=$("$list_dir/x/bin/busybox" --list-full)
fi
stage=$out/rootfs
rm -rf "$stage"
mkdir -p "$stage"
# On a base, its tree first (merged /usr: /sbin and /lib are links into /usr).
if [ -n "$BASE" ]; then cp -a "$BASE/root/." "$stage/"; fi
mkdir -p "$stage"/{sbin,etc/microvm,dev,proc,sys,tmp,run,app,"lib/modules/$release"}
install -m 0755 "$agent" "$stage/sbin/init"
if is_zip "$app"; then
  unzip -q "$app" -d "$stage/app"
elif [ -d "$app" ]; then
  cp -a "$app/." "$stage/app/"
else
  install -m 0755 "$app" "$stage/app/"
fi
if is_zip "$app" || { [ -n "$BASE" ] && [ -d "$app" ]; }; then
  # The author's files as they would be on the platform: root's, readable by all,
  # writable by root only (the application may run as another user).
  chown -R -h 0:0 "$stage/app"
  chmod -R u+rwX,go+rX,go-w "$stage/app"
  chmod 0755 "$stage/app"
fi
install -m 0644 "$cfg" "$stage/etc/microvm/image.json"
# The agent writes the resolver configuration under /run (microvm.dns), which works on
# a read-only root.
ln -sfn /run/microvm/resolv.conf "$stage/etc/resolv.conf"
# A bare rootfs has no trust store; HTTPS to CloudWatch needs one. A base has its own
# (Debian's ca-certificates).
if [ -z "$BASE" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"
fi
# The toolbox (above): busybox, its applets' links and the users a shell expects.
# Paths are looked up in the tree as the guest will see them (a base's /bin is a link
# to usr/bin), never on this machine. Prints the number of links made ("-": the
# image's own busybox stays, and no link is added).
if [ -n "$TOOLBOX" ]; then
  toolbox_links=$(APPLETS=$applets python3 - "$stage" "$tdir/x/bin/busybox" <<'EOF'
import os, shutil, sys
root, busybox = sys.argv[1:]
# Where a shell looks (the agent's default PATH): an applet whose name is already in
# one of these is the image's own tool, and stays.
PATH = ["usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin"]

def inside(rel):
    """The host path of guest path rel, following the tree's own links (an absolute
    one is relative to the tree) in every component but the last."""
    todo, done, hops = [p for p in rel.split("/") if p], [], 0
    while todo:
        p = todo.pop(0)
        if p in (".", ".."):
            done = done[:-1] if p == ".." else done
            continue
        here = os.path.join(root, *done, p)
        if todo and os.path.islink(here):
            hops += 1
            if hops > 40:
                sys.exit(f"rootfs: toolbox: too many links resolving /{rel}")
            target = os.readlink(here)
            done = [] if target.startswith("/") else done
            todo = [t for t in target.split("/") if t] + todo
            continue
        done.append(p)
    return os.path.join(root, *done)

def exists(rel):
    return os.path.lexists(inside(rel))

made = "-"
if exists("bin/busybox"):
    print("rootfs: toolbox: the image has its own /bin/busybox: kept, no applet links", file=sys.stderr)
else:
    dst = inside("bin/busybox")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(busybox, dst)
    os.chmod(dst, 0o755)
    made = 0
    for path in os.environ["APPLETS"].split():
        d, name = os.path.split(path)
        if d not in PATH or name == "busybox":
            continue  # /linuxrc: an initramfs's init, not a tool
        if any(exists(f"{p}/{name}") for p in PATH):
            continue
        link = inside(path)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
        made += 1

# Users: root (exec's default) and nobody (a user without privileges), each added
# only when its name and id are not taken; /root when absent.
def ensure(rel, lines):
    path = inside(rel)
    new = not os.path.lexists(path)
    text = "" if new else open(path).read()
    rows = [l.split(":") for l in text.splitlines()]
    names, ids = {r[0] for r in rows}, {r[2] for r in rows if len(r) > 2}
    add = [l for l in lines if l.split(":")[0] not in names and l.split(":")[2] not in ids]
    if add:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + "".join(l + "\n" for l in add))
        if new:
            os.chmod(path, 0o644)
ensure("etc/passwd", ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"])
ensure("etc/group", ["root:x:0:", "nogroup:x:65534:"])
if not exists("root"):
    os.mkdir(inside("root"), 0o700)
print(made)
EOF
  )
fi
# Copy module $2 (relative to /lib/modules/RELEASE; the package may ship it as .ko.xz)
# into tree $1 and append it to list $3.
add_module() {
  local src=$kdir/x/lib/modules/$release/$2
  [ -f "$src" ] || { [ -f "$src.xz" ] && xz -dc "$src.xz" > "${src}"; } ||
    { echo "rootfs: $KERNEL_PKG has no module $2" >&2; exit 1; }
  mkdir -p "$1/lib/modules/$release/$(dirname "$2")"
  cp "$src" "$1/lib/modules/$release/$2"
  echo "$2" >> "$3"
}
: > "$stage/etc/microvm/modules"
for m in "${MODULES[@]}"; do
  add_module "$stage" "$m" "$stage/etc/microvm/modules"
done
initrd=$out/initrd
rm -rf "$initrd"
mkdir -p "$initrd"/{dev,proc,sys,newroot,etc/microvm}
install -m 0755 "$agent" "$initrd/init"
: > "$initrd/etc/microvm/initrd-modules"
for m in "${INITRD_MODULES[@]}"; do
  add_module "$initrd" "$m" "$initrd/etc/microvm/initrd-modules"
done
# Owned by root in the archive (-R 0:0), no device nodes: the agent mounts devtmpfs.
rm -f "$out/initrd.cpio"
(cd "$initrd" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) > "$out/initrd.cpio"
# A new root makes an old snapshot (taken over the old one) wrong: it goes first, so
# a build stopped halfway never leaves the old snapshot over a new root.
rm -f "$out"/snapshot-memory.zst "$out"/snapshot-disk.qcow2 "$out/build.json"
rm -f "$out/rootfs.ext4"
mkfs_opts=()
if [ -n "$BASE" ]; then
  # The size the tree takes (the larger of its blocks and its bytes), +25% and 64 MiB
  # for what the application writes, in whole MiB; inodes for twice its files.
  used=$(du -s -B1 "$stage" | cut -f1)
  bytes=$(du -s -B1 --apparent-size "$stage" | cut -f1)
  [ "$bytes" -gt "$used" ] && used=$bytes
  files=$(find "$stage" | wc -l)
  SIZE=${SIZE:-$(( (used + used / 4 + (64 << 20) + (1 << 20) - 1) >> 20 ))M}
  mkfs_opts=(-N "$(( files * 2 + 4096 ))")
fi
SIZE=${SIZE:-64M}
mkfs.ext4 -q -F -O ^has_journal -E root_owner=0:0 "${mkfs_opts[@]}" -d "$stage" "$out/rootfs.ext4" "$SIZE"
cp "$kdir/x/boot/vmlinuz-$release" "$out/vmlinuz"
# The config beside the image too: the host reads its image-build hook limits.
install -m 0644 "$cfg" "$out/image.json"
kversion=$(dpkg-deb -f "$kdir"/linux-image-*.deb Version)
extra=
if [ -n "$BASE" ]; then
  extra+=$(printf ',"base":"%s","baseRuntime":"%s","baseSizeBytes":%s,"baseBuildSeconds":%s' \
    "$base_name" "$base_runtime" "$(json "$BASE/base.json" 'd["sizeBytes"]')" \
    "$(json "$BASE/base.json" 'd["buildSeconds"]')")
  extra+=$(printf ',"baseCreatedAt":"%s","basePackagesSha256":"%s"' \
    "$(json "$BASE/base.json" 'd["createdAt"]')" "$(json "$BASE/base.json" 'd["packagesSha256"]')")
fi
# The service model's resources: a list of at most one object (as the agent checks).
min_mem=$(json "$cfg" '(lambda r: ({} if r in (None, []) else r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], dict) else {"minimumMemoryInMiB": "not a list of at most one object"}).get("minimumMemoryInMiB"))(d.get("resources"))')
if [ -n "$min_mem" ]; then
  if ! [[ $min_mem =~ ^[0-9]+$ ]] || [ "$min_mem" -lt 64 ] || [ "$min_mem" -gt 1048576 ]; then
    echo "rootfs: $cfg: resources[0].minimumMemoryInMiB must be 64-1048576, not $min_mem" >&2
    exit 2
  fi
  extra+=",\"minimumMemoryInMiB\":$min_mem"
fi
if [ -n "$TOOLBOX" ] && [ "$toolbox_links" != - ]; then
  extra+=$(printf ',"toolbox":"%s=%s","toolboxApplets":%s' "$TOOLBOX_PKG" "$toolbox_version" "$toolbox_links")
fi
# What the build cost (without the snapshot, which the runner adds): make bench reads it.
# codeBytes: the application's code as installed (/app), the model's codeInstallSizeInBytes.
extra+=$(printf ',"codeBytes":%s' "$(du -s -B1 --apparent-size "$stage/app" | cut -f1)")
extra+=$(printf ',"filesBytes":%s,"buildSeconds":%s' "$(du -s -B1 --apparent-size "$stage" | cut -f1)" \
  "$(awk -v a="$build_started" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')")
printf '{"architecture":"%s","kernelRelease":"%s","kernelPackage":"%s"%s}\n' "$model" "$release" "$(dpkg-deb -f "$kdir"/linux-image-*.deb Package)=$kversion" "$extra" > "$out/manifest.json"
echo "rootfs: $out/rootfs.ext4 ($(du -k --apparent-size "$out/rootfs.ext4" | cut -f1) KiB, $(du -sk "$stage" | cut -f1) KiB used), kernel $out/vmlinuz ($release), initramfs $out/initrd.cpio ($(du -k --apparent-size "$out/initrd.cpio" | cut -f1) KiB)"
if [ -n "$TOOLBOX" ] && [ "$toolbox_links" != - ]; then
  echo "rootfs: toolbox $TOOLBOX_PKG=$toolbox_version: /bin/busybox ($(du -k --apparent-size "$tdir/x/bin/busybox" | cut -f1) KiB), $toolbox_links applet links"
fi
