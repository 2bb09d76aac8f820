"""Qdrant's own shard engine (PyPI qdrant-edge-py) as the workload of the integration tests.

  shard.py create PATH COUNT SEED     a shard of COUNT 64-dimensional points, flushed
  shard.py describe PATH              {"count": N, "queries": [[[id, score], ...], ...]} as JSON
  shard.py upsert PATH FIRST          upsert batches of points from id FIRST, flushing after
                                      each, until killed; prints the count after each flush
  shard.py pack PATH OUT LAYOUT       the shard at PATH packed as Qdrant packs a shard snapshot:
                                      segments as tars (LAYOUT regular) or directories with
                                      files/ (streamable)
  shard.py unpack SNAPSHOT TARGET     Qdrant's own shard unpacker (EdgeShard.unpack_snapshot)
  shard.py server PATH                makes the collection of the shard at PATH look as the
                                      Qdrant server keeps one (config.json, shard_config.json,
                                      replica_state.json)
"""

import io
import json
import os
import random
import sys
import tarfile

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    Point,
    Query,
    QueryRequest,
    UpdateOperation,
)

DIMS = 64
BATCH = 500


def points(first, count, seed):
    rnd = random.Random(seed)
    return [
        Point(i, [rnd.random() for _ in range(DIMS)], {"n": i, "seed": seed})
        for i in range(first, first + count)
    ]


def create(path, count, seed):
    shard = EdgeShard.create(
        path, EdgeConfig(vectors=EdgeVectorParams(size=DIMS, distance=Distance.Cosine))
    )
    batch = points(0, count, seed)
    for k in range(0, count, BATCH):
        shard.update(UpdateOperation.upsert_points(batch[k : k + BATCH]))
    shard.flush()
    shard.close()


def describe(path):
    shard = EdgeShard.load(path)
    rnd = random.Random(12345)
    queries = []
    for _ in range(3):
        vector = [rnd.random() for _ in range(DIMS)]
        hits = shard.query(QueryRequest(limit=10, query=Query.Nearest(vector)))
        queries.append([[hit.id, round(hit.score, 6)] for hit in hits])
    count = shard.count(CountRequest(exact=True))
    shard.close()
    print(json.dumps({"count": count, "queries": queries}))


def upsert(path, first):
    shard = EdgeShard.load(path)
    seed = 1
    while True:
        shard.update(UpdateOperation.upsert_points(points(first, BATCH, seed)))
        shard.flush()
        first += BATCH
        seed += 1
        print(shard.count(CountRequest(exact=True)), flush=True)


def add_tree(tar, root, arcname):
    """Adds the files under `root` as `arcname/...`, files only, sorted (as Qdrant does)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            tar.add(path, arcname=os.path.join(arcname, rel) if arcname else rel)


def pack(path, out, layout):
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        segments = os.path.join(path, "segments")
        for segment in sorted(os.listdir(segments)):
            source = os.path.join(segments, segment)
            if layout == "regular":
                inner = io.BytesIO()
                with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as seg:
                    add_tree(seg, source, "snapshot/files")
                info = tarfile.TarInfo(f"segments/{segment}.tar")
                info.size = inner.tell()
                inner.seek(0)
                tar.addfile(info, inner)
            else:
                add_tree(tar, source, f"segments/{segment}/files")
        for name in sorted(os.listdir(path)):
            if name == "segments":
                continue
            source = os.path.join(path, name)
            if os.path.isdir(source):
                add_tree(tar, source, name)
            else:
                tar.add(source, arcname=name)


def unpack(snapshot, target):
    EdgeShard.unpack_snapshot(snapshot, target)
    describe(target)


def server(path):
    """The files the Qdrant server keeps beside a shard and in its collection's directory."""
    collection = os.path.dirname(path.rstrip("/"))
    config = {
        "params": {"vectors": {"size": DIMS, "distance": "Cosine"}, "shard_number": 1},
        "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
        "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                             "default_segment_number": 0, "flush_interval_sec": 5},
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
    }
    with open(os.path.join(collection, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "shard_config.json"), "w") as f:
        json.dump({"type": "ReplicaSet"}, f)
    with open(os.path.join(path, "replica_state.json"), "w") as f:
        json.dump({"is_local": True, "this_peer_id": 7, "peers": {"7": "Active", "8": "Dead"}}, f)


if __name__ == "__main__":
    command, path = sys.argv[1], sys.argv[2]
    if command == "create":
        create(path, int(sys.argv[3]), int(sys.argv[4]))
    elif command == "describe":
        describe(path)
    elif command == "upsert":
        upsert(path, int(sys.argv[3]))
    elif command == "pack":
        pack(path, sys.argv[3], sys.argv[4])
    elif command == "unpack":
        unpack(path, sys.argv[3])
    elif command == "server":
        server(path)
    else:
        sys.exit(f"unknown command {command}")
