#!/usr/bin/env python3
"""Where a profiled benchmark phase's time went (tests/bench.sh --profile).

    profile.py BENCH_JSONL SCALE PERF_SCRIPT_TXT_GZ

Reads the phase's result line at SCALE (NxE; its own clock) and the samples `perf script
-F time,comm,tid,ip,sym` wrote from `perf record -a -g` of both guest CPUs,
and prints, for the samples inside the phase's clock:
  - CPU seconds by thread;
  - CPU seconds by kind of work, each sample sorted by the first kind its
    call chain shows (the kernel's IPVS commands and, within them, its
    lookups of virtual servers; nftables; routes and addresses; the
    proxy's serializing of IPVS requests; ...);
  - a timeline in steps of a tenth of the phase, CPUs busy by kind.

The clock's end is the last sample of the kernel adding a virtual or real
server, plus what the phase reports after its last IPVS answer; its start
is that end less the phase's seconds. Samples come 999 times a second per
CPU, so every figure is good to a few milliseconds of CPU, plus what the
sampling itself costs.
"""

import collections
import gzip
import json
import re
import sys

HEADER = re.compile(r"^(.+?)\s+(\d+)\s+([\d.]+):")
HZ = 999.0

# (kind, alternatives): a sample is of the kind when its call chain holds
# every substring of one alternative. Tried in order; the first match wins.
KINDS = [
    ("idle", ["native_safe_halt", "default_idle_call"]),
    (
        # __ip_vs_service_find is inlined here: the walk of a hash chain.
        "kernel: IPVS commands, finding the virtual server",
        [("ip_vs_genl_set_cmd", "ip_vs_genl_parse_service")],
    ),
    ("kernel: IPVS commands, the rest", ["ip_vs_genl_set_cmd"]),
    ("kernel: IPVS dumps", ["ip_vs_genl_dump"]),
    ("kernel: IPVS rate estimator", ["estimation_timer"]),
    ("kernel: nftables", ["nf_tables", "nfnetlink"]),
    ("kernel: routes and addresses", ["rtnetlink_rcv", "inet_rtm_", "inet6_rtm_"]),
    ("kernel: netlink, the rest", ["netlink_sendmsg", "netlink_recvmsg"]),
    ("kernel: page faults", ["exc_page_fault"]),
    (
        "serializing IPVS requests",
        ["netlink_ipvs::request", "netlink_ipvs::connection::serialize", "as netlink_packet_core::nla::Nla>::value_len"],
    ),
    ("the model", ["kube_ipvs_proxy::model::"]),
    ("translation", ["kube_ipvs_proxy::translate::"]),
    ("the reconciler", ["kube_ipvs_proxy::reconcile::"]),
    ("malloc and free", ["malloc", "_int_free", "cfree", "unlink_chunk", "realloc"]),
]
OTHER = "anything else"


def samples(path):
    """(time, comm, tid, frames) per sample, frames from the leaf up."""
    current = None
    with gzip.open(path, "rt", errors="replace") as text:
        for line in text:
            line = line.rstrip("\n")
            if not line:
                if current:
                    yield current
                current = None
            elif not line[0].isspace():
                match = HEADER.match(line)
                current = (float(match[3]), match[1].strip(), int(match[2]), []) if match else None
            elif current is not None:
                parts = line.split(None, 1)
                current[3].append(parts[1] if len(parts) > 1 else parts[0])
    if current:
        yield current


def kind(frames):
    chain = "\n".join(frames)
    for name, alternatives in KINDS:
        for alternative in alternatives:
            needles = (alternative,) if isinstance(alternative, str) else alternative
            if all(needle in chain for needle in needles):
                return name
    return OTHER


def phase_clock(path, scale):
    """(seconds, seconds after the last IPVS answer, the line) of the
    phase's line at `scale`."""
    services, endpoints = (int(n) for n in scale.split("x"))
    with open(path) as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    records = [r for r in records if r.get("scale") == {"services": services, "endpoints": endpoints}]
    if len(records) != 1:
        sys.exit(f"{path}: expected one result line at {scale}, found {len(records)}")
    record = records[0]
    if record.get("phase") == "failed":
        sys.exit(f"{path}: the phase failed: {record.get('error')}")
    timed = record.get("cold", record)
    return float(timed["seconds"]), float(timed.get("after_last_answer_seconds") or 0.0), record


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    jsonl, scale, script = sys.argv[1:]
    seconds, after, record = phase_clock(jsonl, scale)
    every = list(samples(script))
    adds = [s[0] for s in every if any("ip_vs_add_service" in f or "ip_vs_new_dest" in f for f in s[3])]
    if not adds:
        sys.exit(f"{script}: no sample of the kernel adding a virtual or real server")
    end = max(adds) + after
    start = end - seconds
    inside = [s for s in every if start <= s[0] <= end]
    scale = record.get("scale", {})
    print(
        f"{record.get('phase')} at {scale.get('services')} × {scale.get('endpoints')}: "
        f"{seconds:.2f} s on its clock, {len(inside) / HZ:.2f} CPU-s sampled on 2 CPUs"
    )

    print("\nCPU seconds by thread")
    threads = collections.Counter((s[1], s[2]) for s in inside)
    for (comm, tid), n in threads.most_common(8):
        print(f"  {n / HZ:7.2f}  {comm} ({tid})")

    print("\nCPU seconds by kind of work")
    kinds = collections.Counter(kind(s[3]) for s in inside)
    for name, n in kinds.most_common():
        print(f"  {n / HZ:7.2f}  {name}")

    step = seconds / 10
    names = [name for name, _ in KINDS] + [OTHER]
    shown = [name for name in names if kinds[name] / HZ >= 0.02 * seconds]
    print(f"\nTimeline: CPUs busy in each tenth of the phase ({step:.2f} s)")
    for i, name in enumerate(shown):
        print(f"  {chr(ord('A') + i)} = {name}")
    print("  from      " + " ".join(f"{chr(ord('A') + i):>5}" for i in range(len(shown))))
    buckets = collections.defaultdict(collections.Counter)
    for s in inside:
        buckets[min(int((s[0] - start) / step), 9)][kind(s[3])] += 1
    for b in range(10):
        row = " ".join(f"{buckets[b][name] / (HZ * step):5.2f}" for name in shown)
        print(f"  {b * step:6.2f} s  {row}")


if __name__ == "__main__":
    main()
