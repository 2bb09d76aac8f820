#!/usr/bin/env python3
"""Engine benchmark: `snapshot create` against `tar -cf - | sha256sum`, and `restore`
against `tar -xf`, side by side in the same run, on a generated 2 GiB mixed tree:

  collections/large   10 x 100 MiB
  collections/medium  1000 x 1 MiB
  collections/small   100 000 x 1 KiB

The full-storage snapshot is the mixed tree; the collection snapshots give the large-file MB/s
and the small-file files/s separately. Runs are cold (page cache dropped before each, when
running as root) and repeated; the median is printed with the ratio to the baseline and the
peak RSS from /usr/bin/time -v.

Usage: bench/engine.py [--dir DIR] [--runs N] [--warm] [--keep]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def generate(storage):
    marker = os.path.join(storage, ".complete")
    if os.path.exists(marker):
        return
    shutil.rmtree(storage, ignore_errors=True)
    print(f"generating the 2 GiB tree in {storage} ...", flush=True)
    spec = [("large", 10, 100 * MIB, 1), ("medium", 1000, MIB, 10), ("small", 100_000, 1024, 100)]
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
    """Runs a shell command under /usr/bin/time -v; returns (seconds, max RSS MiB)."""
    full = ["/usr/bin/time", "-v", "bash", "-c", cmd]
    start = time.monotonic()
    p = subprocess.run(full, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stdout}\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return wall, rss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/snapshot-operator-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="keep the page cache between runs")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "snapshot-operator")
    work = os.path.abspath(args.dir)
    storage = os.path.join(work, "storage")
    snaps = os.path.join(work, "snapshots")
    out = os.path.join(work, "restored")
    os.makedirs(work, exist_ok=True)
    generate(storage)
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
    rows = []
    mode = "warm" if args.warm else "cold"
    for label, collection, rel in cases:
        files, size = tree_stats(os.path.join(storage, rel))
        flag = f"--collection {collection}" if collection else ""
        results = {}

        def measure_group(group):
            """Runs each (key, command-or-factory, before) of the group in turn, `runs` times
            round-robin, so that a slow spell of the disk hits ours and the baseline alike."""
            walls = {key: [] for key, _, _ in group}
            rsss = {key: [] for key, _, _ in group}
            for _ in range(args.runs):
                for key, cmd, before in group:
                    if before:
                        before()
                    command = cmd() if callable(cmd) else cmd
                    drop_caches(args.warm)
                    w, r = timed(command, env)
                    walls[key].append(w)
                    rsss[key].append(r)
            for key in walls:
                results[key] = (statistics.median(walls[key]), max(rsss[key]), min(walls[key]), max(walls[key]))

        def clean_snaps():
            shutil.rmtree(snaps, ignore_errors=True)

        counter = [0]

        def fresh_out():
            # A new directory per run: on ext4 with `discard`, the first extraction after a
            # mass delete runs ~10x slower, so outputs are only removed at the very end.
            counter[0] += 1
            target = os.path.join(out, f"{collection or 'full'}-{counter[0]}")
            os.makedirs(target)
            return target

        gnu_archive = os.path.join(work, "gnu.tar")
        measure_group([
            ("tar -cf - | sha256sum", f"tar -cf - -C {storage} --exclude=.complete {rel} | sha256sum >/dev/null", None),
            ("tar -cf out.tar && sync", f"tar -cf {gnu_archive} -C {storage} --exclude=.complete {rel} && sync",
             lambda: os.path.exists(gnu_archive) and os.remove(gnu_archive)),
            ("snapshot create", f"{binary} snapshot create --storage-path {storage} {flag} --node bench -o json > {work}/created.json", clean_snaps),
        ])
        import json
        with open(f"{work}/created.json") as f:
            archive = json.load(f)["archive"]["location"]
        if collection:
            restore = f"--snapshot {archive}:{collection}"
        else:
            restore = f"--storage-snapshot {archive}"
        measure_group([
            ("tar -xf", lambda: f"tar -xf {archive} -C {fresh_out()}", None),
            ("tar -xf && sync", lambda: f"tar -xf {archive} -C {fresh_out()} && sync", None),
            ("restore (synced)", lambda: f"{binary} restore --storage-path {fresh_out()} {restore} > /dev/null", None),
        ])

        for ours, base in [("snapshot create", "tar -cf - | sha256sum"), ("snapshot create", "tar -cf out.tar && sync"),
                           ("restore (synced)", "tar -xf"), ("restore (synced)", "tar -xf && sync")]:
            w, r, lo, hi = results[ours]
            bw, br, blo, bhi = results[base]
            rows.append((label, ours, base, w, bw, size / MIB / w, files / w, bw / w, r, br, f"{lo:.1f}-{hi:.1f}", f"{blo:.1f}-{bhi:.1f}"))

    print(f"\n{mode} runs, median of {args.runs} (runs interleaved with the baseline); tree: {work}\n")
    head = ("case", "ours", "baseline", "ours s", "base s", "MB/s", "files/s", "speedup", "RSS MiB", "base RSS", "ours range", "base range")
    fmt = "{:<13} {:<17} {:<23} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10}"
    print(fmt.format(*head))
    for (label, ours, base, w, bw, mbs, fps, ratio, r, br, rng, brng) in rows:
        print(fmt.format(label, ours, base, f"{w:.2f}", f"{bw:.2f}", f"{mbs:.0f}", f"{fps:.0f}",
                         f"{ratio:.2f}x", f"{r:.1f}", f"{br:.1f}", rng, brng))
    print("\nspeedup = baseline time / our time (above 1.00x: faster than the baseline)")
    if not args.keep:
        shutil.rmtree(snaps, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        if os.path.exists(os.path.join(work, "gnu.tar")):
            os.remove(os.path.join(work, "gnu.tar"))


if __name__ == "__main__":
    main()
