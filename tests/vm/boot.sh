#!/usr/bin/env bash
# Boots the stock Debian kernel once under virtme-ng and runs one script in
# it as root. The guest sees the host filesystem read-only (build first), its
# own /tmp, and one host directory read-write (--out) where it leaves its
# results, its status and the completion sentinel this script checks.
#
#   tests/vm/boot.sh [--out DIR] SCRIPT [ARGS...]
#
# Exits with the script's status; 125 if the VM did not start or the script
# did not report completion (never a silent pass).
#
# Environment:
#   KIP_VM_KVM=1         use KVM instead of TCG (drops --disable-kvm)
#   KIP_VM_MEMORY=2G     guest memory       KIP_VM_CPUS=2   guest CPUs
#   KIP_VM_TIMEOUT=1200  seconds before the boot is killed
#   KIP_VM_KERNEL=PATH   kernel image (default: newest /boot/vmlinuz-*)
#   KIP_VM_APPEND=ARGS   added to the guest kernel's command line (which
#                        has tsc=reliable; see below)
#   KIP_*                every other KIP_ variable is passed into the guest
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/vm/deps.sh
source "$repo/tests/vm/deps.sh"

out=
if [[ ${1:-} == --out ]]; then
    out=$2
    shift 2
fi
(($# >= 1)) || kip_die "usage: tests/vm/boot.sh [--out DIR] SCRIPT [ARGS...]"
script=$(realpath "$1")
shift
[[ -r $script ]] || kip_die "no such script: $script"
if [[ -z $out ]]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/kip-vm.XXXXXX")
fi
mkdir -p "$out"
out=$(realpath "$out")
rm -f "$out/status" "$out/results" "$out/console.log"

kip_ensure_vm_deps
kernel=$(kip_vm_kernel)

vng_args=(--run "$kernel" --memory "${KIP_VM_MEMORY:-2G}" --cpus "${KIP_VM_CPUS:-2}"
    --rwdir "$out" --cwd "$repo")
[[ ${KIP_VM_KVM:-0} == 1 ]] || vng_args+=(--disable-kvm)
# The guest's clock, as a node's: under TCG the kernel finds the vCPUs' TSCs
# "unsynchronized" at boot and falls back to the HPET, which has no vDSO,
# so every clock read (the runtime's timers, TCP's timestamps, a log line)
# is a system call and an emulated device access, about 1.6 us against
# 0.14 us with the TSC. tsc=reliable skips that check (and the clocksource
# watchdog), so the guest reads its TSC through the vDSO as a node's kernel
# does on its hardware. KIP_VM_APPEND adds to the kernel's command line
# (KIP_VM_APPEND=clocksource=hpet boots the clock of the runs before
# 2026-12-07 18:00 UTC).
vng_args+=(--append "tsc=reliable${KIP_VM_APPEND:+ $KIP_VM_APPEND}")

# The guest does not inherit our environment: forward KIP_* explicitly.
guest_env=("KIP_OUT=$out" "KIP_REPO=$repo")
while IFS= read -r name; do
    [[ $name == KIP_OUT || $name == KIP_REPO ]] || guest_env+=("$name=${!name}")
done < <(compgen -e | grep '^KIP_' || true)
exec_cmd=$(printf '%q ' env "${guest_env[@]}" bash "$repo/tests/vm/guest.sh" "$script" "$@")

kip_log "booting $(basename "$kernel") for $(basename "$script") (results in $out)"
start=$SECONDS
set +e
PATH="$KIP_VNG_VENV/bin:$PATH" timeout --kill-after=30 "${KIP_VM_TIMEOUT:-1200}" \
    vng "${vng_args[@]}" --exec "$exec_cmd" 2>&1 | tee "$out/console.log"
vng_rc=${PIPESTATUS[0]}
set -e
kip_log "VM exited with status $vng_rc after $((SECONDS - start)) s"

if ((vng_rc == 124 || vng_rc == 137)); then
    printf 'ERROR: the VM timed out after %s s (KIP_VM_TIMEOUT)\n' "${KIP_VM_TIMEOUT:-1200}" >&2
    exit 125
fi
if [[ ! -s $out/status ]] || ! grep -q '^KIP-VM-DONE ' "$out/console.log"; then
    printf 'ERROR: the VM did not report completion of %s (vng exit %s); see %s/console.log\n' \
        "$(basename "$script")" "$vng_rc" "$out" >&2
    exit 125
fi
guest_rc=$(<"$out/status")
if [[ $guest_rc != "$vng_rc" ]]; then
    printf 'ERROR: the guest script exited %s but vng exited %s\n' "$guest_rc" "$vng_rc" >&2
    exit 125
fi
exit "$guest_rc"
