#!/usr/bin/env python3
"""Sparse benchmark: a storage directory of real Qdrant shards (written by Qdrant's own engine,
qdrant-edge-py, which preallocates its WAL segments and mmap'd storage: files with holes),
our `snapshot create` and `restore` side by side with GNU tar's sparse mode in the same run:

  archive size      ours vs `tar -cSf`, both against the data on disk (du)
  create time       `snapshot create` vs `tar -cSf out.tar && sync`
  restored on disk  `restore` vs `tar -xSf`, both against the source (du)
  restore time      `restore` (synced) vs `tar -xSf && sync`

Cold page cache before each run (as root), runs interleaved, median of --runs.

Usage: bench/sparse.py [--dir DIR] [--shards N] [--points N] [--runs N]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "qdrant", "shard.py")
MIB = 1 << 20


def python_with_qdrant():
    venv = os.path.join(ROOT, "target", "qdrant-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python) or subprocess.run([python, "-c", "import qdrant_edge"]).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "qdrant-edge-py==0.9.0"], check=True)
    return python


def du(path, apparent=False):
    flags = ["-s", "--block-size=1"] + (["--apparent-size"] if apparent else [])
    out = subprocess.run(["du", *flags, path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(cmd, env):
    start = time.monotonic()
    subprocess.run(["bash", "-c", cmd], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/snapshot-operator-sparse"))
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "snapshot-operator")
    work = os.path.abspath(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    storage = os.path.join(work, "storage")
    python = python_with_qdrant()
    print(f"writing {args.shards} shards of {args.points} points with qdrant-edge-py ...", flush=True)
    for i in range(args.shards):
        shard = os.path.join(storage, "collections", f"c{i}", "0")
        os.makedirs(shard)
        subprocess.run([python, HELPER, "create", shard, str(args.points), str(i)], check=True)
    subprocess.run(["sync"], check=True)
    data, apparent = du(storage), du(storage, apparent=True)

    env = dict(os.environ, SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH=os.path.join(work, "snaps"),
               SNAPSHOT_OPERATOR_LOG="warn")
    env.pop("AWS_CA_BUNDLE", None)
    times = {k: [] for k in ["create", "tar -cSf", "restore", "tar -xSf"]}
    sizes = {}
    for run in range(args.runs):
        shutil.rmtree(env["SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH"], ignore_errors=True)
        gnu = os.path.join(work, "gnu.tar")
        drop_caches()
        times["create"].append(timed(
            f"{binary} snapshot create --storage-path {storage} --node bench -o json > {work}/created.json", env))
        drop_caches()
        times["tar -cSf"].append(timed(f"tar -cSf {gnu} -C {storage} . && sync", env))
        with open(f"{work}/created.json") as f:
            archive = json.load(f)["archive"]["location"]
        sizes["ours"], sizes["tar"] = os.path.getsize(archive), os.path.getsize(gnu)
        ours_out, tar_out = os.path.join(work, f"ours-{run}"), os.path.join(work, f"tar-{run}")
        os.makedirs(tar_out)
        drop_caches()
        times["restore"].append(timed(f"{binary} restore --storage-path {ours_out} --storage-snapshot {archive}", env))
        drop_caches()
        times["tar -xSf"].append(timed(f"tar -xSf {gnu} -C {tar_out} && sync", env))
        sizes["ours restored"], sizes["tar restored"] = du(ours_out), du(tar_out)
        shutil.rmtree(ours_out)
        shutil.rmtree(tar_out)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.shards} Qdrant shards of {args.points} points (64 dims): {data / MIB:.1f} MiB on disk, "
          f"{apparent / MIB:.1f} MiB apparent; cold cache, median of {args.runs}\n")
    print(f"{'':<22} {'ours':>10} {'GNU tar -S':>11} {'vs data on disk':>16}")
    print(f"{'archive (MiB)':<22} {sizes['ours'] / MIB:>10.1f} {sizes['tar'] / MIB:>11.1f} "
          f"{sizes['ours'] / data:>15.3f}x")
    print(f"{'restored on disk (MiB)':<22} {sizes['ours restored'] / MIB:>10.1f} {sizes['tar restored'] / MIB:>11.1f} "
          f"{sizes['ours restored'] / data:>15.3f}x")
    print(f"\n{'':<22} {'ours s':>10} {'baseline s':>11} {'speedup':>8}")
    for ours, base, label in [("create", "tar -cSf", "create vs tar -cSf && sync"),
                              ("restore", "tar -xSf", "restore vs tar -xSf && sync")]:
        print(f"{label:<28} {med[ours]:>6.2f} {med[base]:>11.2f} {med[base] / med[ours]:>7.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
