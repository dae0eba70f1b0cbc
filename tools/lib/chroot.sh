# shellcheck shell=bash
# Shared by tools/fresh-debian-check and tools/deb-check: create Debian chroots with debootstrap,
# mount what network namespaces and Python need inside them, run commands there with a clean
# environment, and unmount everything again. Source it; it defines functions only.
#
#   chroot_create SUITE DIR     debootstrap --variant=minbase SUITE into DIR unless DIR holds one
#   chroot_clone BASE DIR       cp -a a base chroot (a "fresh" one costs a copy, not a debootstrap)
#   chroot_mount DIR            mount / (bind), /proc, /sys (with the cgroup tree), /dev, /dev/pts,
#                               /dev/shm, /run; private
#   chroot_unmount DIR          unmount everything below DIR, deepest first (netns bind mounts too)
#   chroot_prepare_net DIR      host resolv.conf, and the host CA bundle for pip (PIP_CERT)
#   chroot_run DIR CMD...       run CMD in DIR with env -i (no host pip/proxy settings leak in)
#   chroot_remove DIR           unmount and delete DIR (refuses paths outside CHROOT_AREA)
#
# Environment: MIRROR (default http://deb.debian.org/debian).

CHROOT_MIRROR=${MIRROR:-http://deb.debian.org/debian}
CHROOT_SUITES="bullseye bookworm trixie"

chroot_check_suite() {
    case " $CHROOT_SUITES " in
        *" $1 "*) return 0 ;;
        *) echo "unknown suite '$1' (one of: $CHROOT_SUITES)" >&2; return 1 ;;
    esac
}

chroot_create() {
    local suite=$1 dir=$2
    chroot_check_suite "$suite" || return 1
    [ -e "$dir/etc/debian_version" ] && return 0
    command -v debootstrap >/dev/null || apt-get install -y debootstrap
    debootstrap --variant=minbase "$suite" "$dir" "$CHROOT_MIRROR"
}

chroot_clone() {
    local base=$1 dir=$2
    chroot_unmount "$dir"
    rm -rf --one-file-system "$dir"
    cp -a "$base" "$dir"
}

chroot_unmount() {
    local root=$1
    awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}

# Mount privately so nothing propagates back to the host. / of the chroot must be a mount point
# for 'ip netns exec'; /run is a tmpfs so that /run/netns lives and dies with the chroot.
chroot_mount() {
    local root=$1
    _chroot_mnt() { mount "$@"; mount --make-private "${@: -1}"; }
    _chroot_mnt --bind "$root" "$root"
    _chroot_mnt -t proc proc "$root/proc"
    _chroot_mnt --bind /sys "$root/sys"
    # systemd-analyze verify (systemd 247, Debian 11) fails without it: "Cannot determine cgroup
    # we are running in: No medium found". A plain bind of /sys leaves the cgroup mounts out.
    if mountpoint -q /sys/fs/cgroup; then
        mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
        mount --make-rprivate "$root/sys/fs/cgroup"
    fi
    _chroot_mnt --bind /dev "$root/dev"
    _chroot_mnt --bind /dev/pts "$root/dev/pts"
    _chroot_mnt -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
    _chroot_mnt -t tmpfs -o mode=755 tmpfs "$root/run"
}

# pip uses its own CA list; where the host reaches PyPI through a TLS-inspecting proxy, hand pip
# the host's CA bundle (chroot_run sets PIP_CERT when it is there).
chroot_prepare_net() {
    local root=$1
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/host-ca-certificates.crt"
    fi
}

chroot_run() {
    local root=$1; shift
    local extra=()
    [ -f "$root/etc/host-ca-certificates.crt" ] && extra+=(PIP_CERT=/etc/host-ca-certificates.crt)
    chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${extra[@]}" "$@"
}

chroot_remove() {
    local dir=$1
    case $dir in
        "${CHROOT_AREA:?}"/?*) ;;
        *) echo "refusing to remove $dir (outside ${CHROOT_AREA})" >&2; return 1 ;;
    esac
    chroot_unmount "$dir"
    rm -rf --one-file-system "$dir"
}
