#!/usr/bin/env bash
# Makes a fresh clone runnable: Debian packages, npm dependencies, generated code, build.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v nft >/dev/null || need+=(nftables)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v ping >/dev/null || need+=(iputils-ping)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
# busybox-static: a static /bin/busybox (ldd fails on a static binary).
{ [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v cpio >/dev/null || need+=(cpio)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v xz >/dev/null || need+=(xz-utils)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
# nginx: the HTTP ingress role; iperf3: the data-plane benchmarks.
command -v nginx >/dev/null || need+=(nginx)
command -v iperf3 >/dev/null || need+=(iperf3)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts etcd and nginx services on install; ours are started by the tests and the demo.
for svc in etcd nginx; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

stamp=node_modules/.noid-lock
if [[ ! -d node_modules || ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  echo "installing npm dependencies" >&2
  # npm ci refuses a lock file that lacks optional per-platform packages the
  # registry here does not serve (buf's darwin/win32 binaries); npm install
  # honours the same lock file and skips them.
  npm ci --no-fund --no-audit >&2 2>/dev/null || npm install --no-fund --no-audit >&2
  cp package-lock.json "$stamp"
fi

echo "building" >&2
npm run --silent build >&2
