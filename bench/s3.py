#!/usr/bin/env python3
"""S3 benchmark: our uploads and downloads against `rclone copyto`, side by side in the same
run, against the same local SeaweedFS server (scripts/s3-server.sh):

  * a 1 GiB archive file: `snapshot upload` / `snapshot download` vs rclone;
  * the 2 GiB mixed tree of bench/engine.py: `snapshot create` streamed straight to S3 (tar,
    hash and multipart upload in one pass, no temp file) vs `rclone copyto` of the same
    archive already on disk; then downloads of it.

Prints wall time, MB/s, the speedup (rclone time / our time) and peak RSS (/usr/bin/time -v).
Page cache is warm: the server's ingest is the bottleneck being compared.

Usage: bench/s3.py [--dir DIR] [--runs N]     (needs rclone: apt-get install rclone)
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
sys.path.insert(0, os.path.join(ROOT, "bench"))
import engine  # noqa: E402  (tree generation)


def timed(cmd, env):
    p = subprocess.run(["/usr/bin/time", "-v", "bash", "-c", cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stdout}\n{p.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    return seconds, rss, p.stdout


def start_server():
    out = subprocess.run(
        ["bash", "-c", "source scripts/s3-server.sh && s3_start >&2 && env | grep ^SNAPSHOT_OPERATOR_TEST_S3_"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    env = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    return env


def stop_server():
    subprocess.run(["bash", "-c", "source scripts/s3-server.sh && s3_stop"], cwd=ROOT, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/snapshot-operator-bench"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("rclone"):
        sys.exit("rclone is needed: apt-get install rclone")

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "snapshot-operator")
    work = os.path.abspath(args.dir)
    storage = os.path.join(work, "storage")
    os.makedirs(work, exist_ok=True)
    engine.generate(storage)
    local_snaps = os.path.join(work, "s3-bench-local")
    shutil.rmtree(local_snaps, ignore_errors=True)

    s3 = start_server()
    try:
        bucket = s3["SNAPSHOT_OPERATOR_TEST_S3_BUCKET"]
        c = "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG"
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        env.update({
            "SNAPSHOT_OPERATOR_LOG": "warn",
            "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH": "bench",
            f"{c}__SNAPSHOTS_STORAGE": "s3",
            f"{c}__S3_CONFIG__BUCKET": bucket,
            f"{c}__S3_CONFIG__ENDPOINT_URL": s3["SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT"],
            f"{c}__S3_CONFIG__ACCESS_KEY": s3["SNAPSHOT_OPERATOR_TEST_S3_ACCESS_KEY"],
            f"{c}__S3_CONFIG__SECRET_KEY": s3["SNAPSHOT_OPERATOR_TEST_S3_SECRET_KEY"],
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": s3["SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT"],
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3["SNAPSHOT_OPERATOR_TEST_S3_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3["SNAPSHOT_OPERATOR_TEST_S3_SECRET_KEY"],
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        local_env = dict(env, SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH=local_snaps)
        for k in [k for k in local_env if k.startswith(f"{c}__")]:
            del local_env[k]
        # Archives on disk: the tree's, and the 1000 MiB collection "large" as the 1 GiB one.
        _, _, out = timed(f"{binary} snapshot create --storage-path {storage} --node bench -o json", local_env)
        tree_archive = json.loads(out)["archive"]["location"]
        tree_size = os.path.getsize(tree_archive)
        _, _, out = timed(f"{binary} snapshot create --storage-path {storage} --collection large --node bench -o json", local_env)
        one_gib = json.loads(out)["archive"]["location"]
        one_gib_name = os.path.basename(one_gib)
        one_gib_size = os.path.getsize(one_gib)

        rows = []

        def measure(ours_fn, base_fn):
            """Runs ours and the baseline alternately (run n of each back to back), so that
            drift of the disk or the server hits both alike; (median wall, max RSS) of each."""
            runs = {"ours": ([], []), "base": ([], [])}
            for n in range(1, args.runs + 1):
                for side, fn in (("ours", ours_fn), ("base", base_fn)):
                    w, r, _ = timed(fn(n), env)
                    runs[side][0].append(w)
                    runs[side][1].append(r)
            return tuple((statistics.median(w), max(r)) for w, r in runs.values())

        def row(case, size, ours_label, base_label, pair):
            ours, base = pair
            rows.append((case, ours_label, base_label, ours[0], base[0], size / MIB / ours[0], base[0] / ours[0], ours[1], base[1]))

        # 1 GiB archive: upload, download.
        row("1 GiB archive", one_gib_size, "snapshot upload", "rclone copyto (up)", measure(
            lambda n: f"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH=up{n} {binary} snapshot upload {one_gib} >/dev/null",
            lambda n: f"rclone copyto {one_gib} bench:{bucket}/rclone/one-{n}.snapshot"))
        row("1 GiB archive", one_gib_size, "snapshot download", "rclone copyto (down)", measure(
            lambda n: f"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH=up1 {binary} snapshot download {one_gib_name} -o {work}/down.snapshot; rm -f {work}/down.snapshot",
            lambda n: f"rclone copyto bench:{bucket}/rclone/one-1.snapshot {work}/down.snapshot; rm -f {work}/down.snapshot"))

        # The 2 GiB tree: snapshot streamed to S3 vs rclone of the archive file; downloads.
        row("2 GiB tree", tree_size, "snapshot create", "rclone copyto (up)", measure(
            lambda n: f"{binary} snapshot create --storage-path {storage} --node tree{n} >/dev/null",
            lambda n: f"rclone copyto {tree_archive} bench:{bucket}/rclone/tree-{n}.snapshot"))
        listing = json.loads(subprocess.run([binary, "snapshot", "list", "-o", "json"], env=env,
                                            capture_output=True, text=True, check=True).stdout)
        tree_name = next(e["name"] for e in listing if e["name"].startswith("full-snapshot-tree"))
        row("2 GiB tree", tree_size, "snapshot download", "rclone copyto (down)", measure(
            lambda n: f"{binary} snapshot download {tree_name} -o {work}/down.snapshot; rm -f {work}/down.snapshot",
            lambda n: f"rclone copyto bench:{bucket}/rclone/tree-1.snapshot {work}/down.snapshot; rm -f {work}/down.snapshot"))
    finally:
        stop_server()
        shutil.rmtree(local_snaps, ignore_errors=True)

    print(f"\nwarm runs against SeaweedFS on loopback, median of {args.runs}, runs interleaved with rclone\n")
    fmt = "{:<14} {:<18} {:<21} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9}"
    print(fmt.format("case", "ours", "baseline", "ours s", "base s", "MB/s", "speedup", "RSS MiB", "base RSS"))
    for (case, ours, base, w, bw, mbs, ratio, r, br) in rows:
        print(fmt.format(case, ours, base, f"{w:.2f}", f"{bw:.2f}", f"{mbs:.0f}", f"{ratio:.2f}x", f"{r:.1f}", f"{br:.1f}"))
    print("\nspeedup = rclone time / our time; our S3 defaults: 16 MiB parts, 4 in flight")


if __name__ == "__main__":
    main()
