# shellcheck shell=bash
# Host dependencies of the VM test bed, installed on demand. Sourced by
# tests/run.sh and tests/vm/boot.sh; every function is idempotent and quiet
# when everything is already present.

# The Debian packages the VM needs on the host:
#   qemu-system-x86   the emulator (TCG unless KIP_VM_KVM=1)
#   linux-image-amd64 a stock kernel with IPVS, dummy and veth as modules
#   busybox-static    virtme-ng builds its initramfs from busybox
#   kmod, udev        modprobe inside the guest; udev settles the virtio devices
#   procps python3    sysctl, and the test backends and clients (the guest uses /usr/bin)
#   ipvsadm iproute2 strace curl  the tools the guest scripts run
#   python3-venv      the virtualenv that holds virtme-ng
#   nftables conntrack the guest reads state with `nft -j` and `conntrack -L`
#                     (tests only; the proxy speaks netlink itself)
#   iptables ipset    the takeover group seeds kube-proxy's IPVS-mode rules and
#                     sets with them (tests/vm/upstream-seed.sh)
KIP_APT_PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static kmod udev procps python3
    ipvsadm iproute2 strace curl python3-venv nftables conntrack iptables ipset)

# virtme-ng boots the host's own root filesystem read-only in the guest. 1.42
# is the version this test bed was verified with.
KIP_VNG_VERSION=${KIP_VNG_VERSION:-1.42}
KIP_VNG_VENV=${KIP_VNG_VENV:-/opt/kube-ipvs-proxy-vng}

kip_log() { printf '==> %s\n' "$*" >&2; }
kip_die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

kip_missing_packages() {
    local pkg status
    for pkg in "${KIP_APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || printf '%s\n' "$pkg"
    done
}

kip_ensure_packages() {
    local missing
    mapfile -t missing < <(kip_missing_packages)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || kip_die "missing Debian packages (${missing[*]}); install them as root: apt-get install -y ${missing[*]}"
    kip_log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || kip_die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || kip_die "apt-get install ${missing[*]} failed"
}

kip_vng_ok() {
    [[ -x $KIP_VNG_VENV/bin/vng ]] &&
        [[ $("$KIP_VNG_VENV/bin/vng" --version 2>/dev/null) == "virtme-ng $KIP_VNG_VERSION" ]]
}

kip_ensure_vng() {
    kip_vng_ok && return 0
    kip_log "installing virtme-ng $KIP_VNG_VERSION into $KIP_VNG_VENV"
    rm -rf "$KIP_VNG_VENV"
    python3 -m venv "$KIP_VNG_VENV" || kip_die "python3 -m venv $KIP_VNG_VENV failed (is python3-venv installed?)"
    "$KIP_VNG_VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$KIP_VNG_VERSION" ||
        kip_die "pip install virtme-ng==$KIP_VNG_VERSION failed"
    kip_vng_ok || kip_die "$KIP_VNG_VENV/bin/vng does not report virtme-ng $KIP_VNG_VERSION"
}

# The newest kernel linux-image-amd64 installed, unless KIP_VM_KERNEL names one.
kip_vm_kernel() {
    if [[ -n ${KIP_VM_KERNEL:-} ]]; then
        [[ -r $KIP_VM_KERNEL ]] || kip_die "KIP_VM_KERNEL=$KIP_VM_KERNEL is not a readable file"
        printf '%s\n' "$KIP_VM_KERNEL"
        return
    fi
    local newest
    newest=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    [[ -n $newest ]] || kip_die "no /boot/vmlinuz-* found (is linux-image-amd64 installed?)"
    [[ -r /boot/$newest ]] || kip_die "/boot/$newest is not readable (run as root)"
    [[ -d /lib/modules/${newest#vmlinuz-} ]] || kip_die "/lib/modules/${newest#vmlinuz-} is missing: the guest could not load IPVS"
    printf '/boot/%s\n' "$newest"
}

kip_ensure_vm_deps() {
    kip_ensure_packages
    kip_ensure_vng
}
