#!/usr/bin/env python3
"""Engine benchmark: `snapshot create` against `tar -cf - | sha256sum`, and `restore`
against `tar -xf`, side by side in the same run, on a generated mixed tree (`--tree`):

                      2.2G (default)   820M
  collections/large   10 x 100 MiB     5 x 100 MiB
  collections/medium  1000 x 1 MiB     300 x 1 MiB
  collections/small   100 000 x 1 KiB  20 000 x 1 KiB

The full-storage snapshot is the mixed tree; the collection snapshots give the large-file MB/s
and the small-file files/s separately. Runs are cold (page cache dropped before each, when
running as root) and repeated, interleaved with the baselines; the median is printed with the
ratio to the baseline and the peak RSS from /usr/bin/time -v.

For restores, a second table sets ours against `tar -xf && sync` by what does not depend on a
noisy disk: the bytes written to storage (the processes' write_bytes), the fsync-family calls
and all system calls (one extra run each under strace -f -c), and the context switches.

For a few minutes after many files were deleted (a previous run's outputs included), ext4
creates files several times slower (it scans past recently freed inodes): leave the disk five
minutes first.

Usage: bench/engine.py [--dir DIR] [--tree 2.2G|820M] [--runs N] [--warm] [--only restore] [--keep]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


TREES = {
    "2.2G": [("large", 10, 100 * MIB, 1), ("medium", 1000, MIB, 10), ("small", 100_000, 1024, 100)],
    "820M": [("large", 5, 100 * MIB, 1), ("medium", 300, MIB, 3), ("small", 20_000, 1024, 20)],
}
SYNCS = ("fsync", "fdatasync", "syncfs", "sync", "msync")
HINTS = ("sync_file_range",)


def generate(storage, spec):
    marker = os.path.join(storage, ".complete")
    if os.path.exists(marker):
        return
    shutil.rmtree(storage, ignore_errors=True)
    print(f"generating the tree in {storage} ...", flush=True)
    for name, count, size, per_dir in spec:
        base = os.path.join(storage, "collections", name)
        for i in range(count):
            d = os.path.join(base, f"{i // max(1, count // per_dir):04d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
                left = size
                while left:
                    n = min(left, 8 * MIB)
                    f.write(os.urandom(n))
                    left -= n
    subprocess.run(["sync"], check=True)
    open(marker, "w").close()


def tree_stats(path):
    files = total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            if n == ".complete":
                continue
            files += 1
            total += os.path.getsize(os.path.join(dirpath, n))
    return files, total


def drop_caches(warm):
    subprocess.run(["sync"], check=True)
    if warm:
        return
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(cmd, env=None):
    """Runs a shell command under /usr/bin/time -v; returns its wall seconds and a dict of
    rss (max RSS MiB), vcs / ics (voluntary / involuntary context switches) and written
    (bytes its processes sent to storage: write_bytes less cancelled_write_bytes, which the
    shell running it has summed from every child it reaped)."""
    wrapped = f"{cmd}\nrc=$?; grep -E '^(cancelled_)?write_bytes' /proc/$$/io >&2; exit $rc"
    full = ["/usr/bin/time", "-v", "bash", "-c", wrapped]
    start = time.monotonic()
    p = subprocess.run(full, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stdout}\n{p.stderr}")

    def field(pattern):
        return int(re.search(pattern, p.stderr, re.M).group(1))

    return wall, {
        "rss": field(r"Maximum resident set size \(kbytes\): (\d+)") / 1024,
        "vcs": field(r"Voluntary context switches: (\d+)"),
        "ics": field(r"Involuntary context switches: (\d+)"),
        "written": field(r"^write_bytes: (\d+)") - field(r"^cancelled_write_bytes: (\d+)"),
    }


def syscalls(cmd, env):
    """Runs a shell command once under `strace -f -c`; returns (all system calls, the
    syncs that wait for the disk among them, the writeback hints that do not)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        p = subprocess.run(["strace", "-f", "-c", "-o", out.name, "bash", "-c", cmd],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            sys.exit(f"failed under strace: {cmd}\n{p.stderr}")
        calls = {}
        for line in out.read().splitlines():
            cols = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(cols) >= 5 and cols[3].isdigit():
                calls[cols[-1]] = int(cols[3])
    return (calls.get("total", 0), sum(calls.get(name, 0) for name in SYNCS),
            sum(calls.get(name, 0) for name in HINTS))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/snapshot-operator-bench"))
    ap.add_argument("--tree", choices=sorted(TREES), default="2.2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="keep the page cache between runs")
    ap.add_argument("--only", choices=["restore"], help="time restores only (the archive is made once)")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "snapshot-operator")
    work = os.path.abspath(args.dir)
    storage = os.path.join(work, "storage" if args.tree == "2.2G" else f"storage-{args.tree}")
    snaps = os.path.join(work, "snapshots")
    out = os.path.join(work, "restored")
    os.makedirs(work, exist_ok=True)
    generate(storage, TREES[args.tree])
    if os.path.exists(out):
        # Absorb the slow first allocation after a mass delete (see fresh_out) before timing.
        shutil.rmtree(out)
        os.makedirs(os.path.join(out, "warm-up"))
        subprocess.run(f"tar -cf - -C {storage} collections/small | tar -xf - -C {out}/warm-up",
                       shell=True, check=True)
    env = dict(os.environ, SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH=snaps, SNAPSHOT_OPERATOR_LOG="warn")
    env.pop("AWS_CA_BUNDLE", None)

    cases = [("mixed (full)", None, "."), ("large files", "large", "collections/large"),
             ("small files", "small", "collections/small")]
    rows, counted = [], []
    mode = "warm" if args.warm else "cold"
    counter = [0]

    def fresh_out(name):
        # A new directory per run: on ext4 with `discard`, the first extraction after a
        # mass delete runs ~10x slower, so outputs are only removed at the very end.
        counter[0] += 1
        target = os.path.join(out, f"{name}-{counter[0]}")
        os.makedirs(target)
        return target

    for label, collection, rel in cases:
        files, size = tree_stats(os.path.join(storage, rel))
        flag = f"--collection {collection}" if collection else ""
        results = {}

        def measure_group(group):
            """Runs each (key, command-or-factory, before) of the group in turn, `runs` times
            round-robin, so that a slow spell of the disk hits ours and the baseline alike."""
            seen = {key: [] for key, _, _ in group}
            for _ in range(args.runs):
                for key, cmd, before in group:
                    if before:
                        before()
                    command = cmd() if callable(cmd) else cmd
                    drop_caches(args.warm)
                    seen[key].append(timed(command, env))
            for key, runs in seen.items():
                walls = [w for w, _ in runs]
                results[key] = {
                    "wall": statistics.median(walls), "lo": min(walls), "hi": max(walls),
                    "rss": max(m["rss"] for _, m in runs),
                    **{k: statistics.median(m[k] for _, m in runs) for k in ("vcs", "ics", "written")},
                }

        def clean_snaps():
            shutil.rmtree(snaps, ignore_errors=True)

        gnu_archive = os.path.join(work, "gnu.tar")
        create = f"{binary} snapshot create --storage-path {storage} {flag} --node bench -o json > {work}/created.json"
        if args.only == "restore":
            clean_snaps()
            subprocess.run(create, shell=True, check=True, env=env)
        else:
            measure_group([
                ("tar -cf - | sha256sum", f"tar -cf - -C {storage} --exclude=.complete {rel} | sha256sum >/dev/null", None),
                ("tar -cf out.tar && sync", f"tar -cf {gnu_archive} -C {storage} --exclude=.complete {rel} && sync",
                 lambda: os.path.exists(gnu_archive) and os.remove(gnu_archive)),
                ("snapshot create", create, clean_snaps),
            ])
        with open(f"{work}/created.json") as f:
            archive = json.load(f)["archive"]["location"]
        if collection:
            restore = f"--snapshot {archive}:{collection}"
        else:
            restore = f"--storage-snapshot {archive}"
        name = collection or "full"
        restores = [
            ("tar -xf", lambda: f"tar -xf {archive} -C {fresh_out(name)}"),
            ("tar -xf && sync", lambda: f"tar -xf {archive} -C {fresh_out(name)} && sync"),
            ("restore (synced)", lambda: f"{binary} restore --storage-path {fresh_out(name)} {restore} > /dev/null"),
        ]
        measure_group([(key, cmd, None) for key, cmd in restores])
        for key, cmd in restores[1:]:
            results[key]["calls"] = syscalls(cmd(), env)

        pairs = [("restore (synced)", "tar -xf"), ("restore (synced)", "tar -xf && sync")]
        if args.only != "restore":
            pairs = [("snapshot create", "tar -cf - | sha256sum"), ("snapshot create", "tar -cf out.tar && sync")] + pairs
        for ours, base in pairs:
            o, b = results[ours], results[base]
            rows.append((label, ours, base, o["wall"], b["wall"], size / MIB / o["wall"], files / o["wall"],
                         b["wall"] / o["wall"], o["rss"], b["rss"],
                         f"{o['lo']:.1f}-{o['hi']:.1f}", f"{b['lo']:.1f}-{b['hi']:.1f}"))
        for key in ("restore (synced)", "tar -xf && sync"):
            counted.append((label, key, files, results[key]))

    print(f"\n{mode} runs, median of {args.runs} (runs interleaved with the baseline); tree {args.tree}: {work}\n")
    head = ("case", "ours", "baseline", "ours s", "base s", "MB/s", "files/s", "speedup", "RSS MiB", "base RSS", "ours range", "base range")
    fmt = "{:<13} {:<17} {:<23} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}"
    print(fmt.format(*head))
    for (label, ours, base, w, bw, mbs, fps, ratio, r, br, rng, brng) in rows:
        print(fmt.format(label, ours, base, f"{w:.2f}", f"{bw:.2f}", f"{mbs:.0f}", f"{fps:.0f}",
                         f"{ratio:.2f}x", f"{r:.1f}", f"{br:.1f}", rng, brng))
    print("\nspeedup = baseline time / our time (above 1.00x: faster than the baseline)")

    print(f"\nrestores, what they cost (medians of {args.runs}; system calls from one run under strace -f -c)\n")
    fmt = "{:<13} {:<17} {:>8} {:>10} {:>6} {:>6} {:>10} {:>8} {:>8} {:>8} {:>7}"
    print(fmt.format("case", "", "files", "written MB", "syncs", "hints", "syscalls", "calls/f", "vol cs", "invol cs",
                     "time s"))
    for label, key, files, r in counted:
        total, syncs, hints = r["calls"]
        print(fmt.format(label, key, files, f"{r['written'] / 1e6:.0f}", syncs, hints, total, f"{total / files:.1f}",
                         f"{r['vcs']:.0f}", f"{r['ics']:.0f}", f"{r['wall']:.2f}"))
    print("\nsyncs: fsync, fdatasync, syncfs, sync and msync calls (they wait for the disk); hints: sync_file_range\n"
          "(starts writeback, waits for nothing); vol / invol cs: voluntary / involuntary context switches")
    if not args.keep:
        shutil.rmtree(snaps, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        if os.path.exists(os.path.join(work, "gnu.tar")):
            os.remove(os.path.join(work, "gnu.tar"))


if __name__ == "__main__":
    main()
