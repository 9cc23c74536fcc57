#!/bin/sh
# /init of the noid test guest's initramfs (busybox). Loads the virtio modules the kernel
# has as modules, configures eth0 from the kernel's ip= argument (the kernel does not:
# virtio_net is a module and IP autoconfiguration is not built in), then switches to the
# VM's own root disk (noid.root=) or, without one, stays in the initramfs. Either way
# busybox init runs the guest agent from /etc/inittab.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys

while read -r m; do
  [ -n "$m" ] && insmod "/lib/modules/$m" 2>/dev/null
done </lib/modules/load

IPARG="" ROOT=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ip=*) IPARG="${arg#ip=}" ;;
    noid.root=*) ROOT="${arg#noid.root=}" ;;
  esac
done

ip link set lo up
# ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>
if [ -n "$IPARG" ] && ! ip -4 addr show dev eth0 2>/dev/null | grep -q inet; then
  OLDIFS="$IFS"; IFS=:
  set -- $IPARG
  IFS="$OLDIFS"
  addr="$1" gw="$3" mask="$4" host="$5" dev="${6:-eth0}"
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -e "/sys/class/net/$dev" ] && break; sleep 0.2; done
  if [ -n "$mask" ]; then ifconfig "$dev" "$addr" netmask "$mask" up; else ifconfig "$dev" "$addr" up; fi
  [ -n "$gw" ] && route add default gw "$gw" dev "$dev"
  [ -n "$host" ] && hostname "$host"
fi

if [ -n "$ROOT" ]; then
  for i in $(seq 1 50); do [ -b "$ROOT" ] && break; sleep 0.1; done
  if mount -t ext4 "$ROOT" /newroot; then
    mount --move /dev /newroot/dev
    mount --move /proc /newroot/proc
    mount --move /sys /newroot/sys
    exec switch_root /newroot /sbin/init
  fi
  echo "noid-init: cannot mount root $ROOT; staying in the initramfs" >/dev/console
fi
exec /sbin/init
