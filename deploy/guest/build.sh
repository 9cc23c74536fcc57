#!/usr/bin/env bash
# Builds noid's small test guest from Debian packages only, into <repo>/.noid/guest/:
#   vmlinuz            a Debian kernel (this machine's /boot one, or linux-image-cloud-amd64 fetched
#                      with `apt-get download` when /boot has none with its modules)
#   initramfs.cpio.gz  busybox-static, the virtio/ext4 modules (the Debian kernel has them as
#                      modules, not built in), /init (init.sh) and the guest agent
#   rootfs.ext4        the base root disk (busybox + guest agent), shared read-only by VMs
#                      through per-VM qcow2 overlays
#   noid-agent         the guest agent (guest-agent/noid-agent.c, musl-gcc -static)
# Idempotent: does nothing when the inputs have not changed (a stamp holds their hash).
# Needs: busybox-static, musl-tools, cpio, e2fsprogs, xz-utils, gzip (and apt-get + dpkg-deb
# for the kernel fallback).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${NOID_GUEST_DIR:-$REPO/.noid/guest}"
ROOTFS_MB="${NOID_GUEST_ROOTFS_MB:-64}"
# What the guest needs that Debian kernels build as modules; dependencies are resolved
# from modules.dep. crc32c backs ext4's metadata checksums.
WANT_MODULES=(virtio_mmio virtio_blk virtio_net crc32c_generic ext4)

die() { echo "build.sh: $*" >&2; exit 1; }
for c in busybox musl-gcc cpio mke2fs xz gzip; do command -v "$c" >/dev/null || die "missing command $c"; done
BUSYBOX="$(command -v busybox)"
file -L "$BUSYBOX" 2>/dev/null | grep -q "statically linked" || ldd "$BUSYBOX" 2>&1 | grep -q "not a dynamic" \
  || die "$BUSYBOX is not static (install busybox-static)"

mkdir -p "$OUT"

# --- the kernel: /boot's newest with its module tree, else the cloud kernel package ---
pick_kernel() {
  local v
  for v in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -rV); do
    if [ -f "/lib/modules/$v/modules.dep" ]; then
      KVER="$v" KIMG="/boot/vmlinuz-$v" KMODS="/lib/modules/$v"
      return 0
    fi
  done
  local pkgdir="$OUT/kernel-pkg"
  if [ ! -d "$pkgdir/boot" ]; then
    local pkg
    pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    [ -n "$pkg" ] || die "no kernel in /boot and linux-image-cloud-amd64 has no kernel dependency"
    rm -rf "$pkgdir.tmp" && mkdir -p "$pkgdir.tmp"
    (cd "$pkgdir.tmp" && apt-get download "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    dpkg-deb -x "$pkgdir.tmp"/*.deb "$pkgdir.tmp/x"
    rm -rf "$pkgdir" && mv "$pkgdir.tmp/x" "$pkgdir" && rm -rf "$pkgdir.tmp"
  fi
  v="$(ls -1 "$pkgdir/boot" | sed -n 's/^vmlinuz-//p' | head -1)"
  KVER="$v" KIMG="$pkgdir/boot/vmlinuz-$v" KMODS="$pkgdir/lib/modules/$v"
  [ -f "$KMODS/modules.dep" ] || die "$pkg has no modules.dep"
}
pick_kernel

# --- idempotency: hash every input ---
STAMP="$(cat "$HERE/build.sh" "$HERE/init.sh" "$REPO/guest-agent/noid-agent.c" | sha256sum | cut -c1-16)-$KVER-$ROOTFS_MB-$(stat -c %s "$BUSYBOX")"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] \
  && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/rootfs.ext4" ]; then
  echo "guest up to date in $OUT"
  exit 0
fi

WORK="$(mktemp -d "$OUT/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- the guest agent ---
musl-gcc -static -Os -Wall -Wextra -o "$WORK/noid-agent" "$REPO/guest-agent/noid-agent.c"
strip "$WORK/noid-agent" 2>/dev/null || true

# --- the root filesystem tree (shared by the root disk and the initramfs) ---
make_tree() {
  local t="$1"
  mkdir -p "$t"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,proc,sys,dev,tmp,root,run,var/log,newroot,lib/modules}
  chmod 1777 "$t/tmp"
  cp "$BUSYBOX" "$t/bin/busybox"
  local a
  # Every applet as a relative symlink at the path busybox itself names.
  for a in $("$BUSYBOX" --list-full); do
    [ "$a" = "bin/busybox" ] && continue
    mkdir -p "$t/$(dirname "$a")"
    ln -sf "$(realpath -m --relative-to="$t/$(dirname "$a")" "$t/bin/busybox")" "$t/$a"
  done
  install -m 0755 "$WORK/noid-agent" "$t/sbin/noid-agent"
  cat >"$t/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:/sbin/noid-agent
ttyS0::respawn:/bin/cttyhack /bin/sh
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
EOF
  cat >"$t/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# /init moved these over already; mount them when booted another way.
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sys /sys
[ -e /dev/null ] || mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "noid guest up: $(uname -r)" >/dev/console
EOF
  chmod 0755 "$t/etc/init.d/rcS"
  echo "root:x:0:0:root:/root:/bin/sh" >"$t/etc/passwd"
  echo "root:x:0:" >"$t/etc/group"
  echo "noid-guest" >"$t/etc/hostname"
}

make_tree "$WORK/rootfs"
mke2fs -q -F -t ext4 -L noid-root -d "$WORK/rootfs" "$WORK/rootfs.ext4" "${ROOTFS_MB}M"

# --- the initramfs: the same tree plus modules and /init ---
make_tree "$WORK/initramfs"
install -m 0755 "$HERE/init.sh" "$WORK/initramfs/init"
declare -A SEEN=()
ORDER=()
add_module() { # depth-first over modules.dep, so dependencies load first
  local rel deps d
  rel="$(awk -F: -v m="$1" '{ n=$1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n); if (n == m) { print $0; exit } }' "$KMODS/modules.dep")"
  if [ -z "$rel" ]; then
    # Built into this kernel: nothing to load.
    grep -qE "/$1\.ko$" "$KMODS/modules.builtin" 2>/dev/null || grep -qE "/${1//_/[-_]}\.ko$" "$KMODS/modules.builtin" \
      || die "kernel $KVER has no module $1"
    return 0
  fi
  local path="${rel%%:*}"
  [ -n "${SEEN[$path]:-}" ] && return 0
  SEEN[$path]=1
  for d in ${rel#*:}; do
    local name="${d##*/}"; name="${name%%.ko*}"; add_module "${name//-/_}"
  done
  ORDER+=("$path")
}
for m in "${WANT_MODULES[@]}"; do add_module "$m"; done
: >"$WORK/initramfs/lib/modules/load"
for p in "${ORDER[@]}"; do
  base="$(basename "$p")"; base="${base%.xz}"; base="${base%.zst}"; base="${base%.gz}"
  case "$p" in
    *.xz) xz -dc "$KMODS/$p" >"$WORK/initramfs/lib/modules/$base" ;;
    *.zst) zstd -qdc "$KMODS/$p" >"$WORK/initramfs/lib/modules/$base" ;;
    *.gz) gzip -dc "$KMODS/$p" >"$WORK/initramfs/lib/modules/$base" ;;
    *) cp "$KMODS/$p" "$WORK/initramfs/lib/modules/$base" ;;
  esac
  echo "$base" >>"$WORK/initramfs/lib/modules/load"
done
(cd "$WORK/initramfs" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 >"$WORK/initramfs.cpio.gz")

# --- publish atomically, file by file, stamp last ---
cp "$KIMG" "$WORK/vmlinuz"
for f in vmlinuz initramfs.cpio.gz rootfs.ext4 noid-agent; do mv -f "$WORK/$f" "$OUT/$f"; done
echo "$STAMP" >"$OUT/stamp"
echo "guest built in $OUT (kernel $KVER, modules: ${ORDER[*]##*/})"
