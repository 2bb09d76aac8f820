"""Qdrant's own shard engine (PyPI qdrant-edge-py) as the workload of the integration tests.

  shard.py create PATH COUNT SEED     a shard of COUNT 64-dimensional points, flushed
  shard.py describe PATH              {"count": N, "queries": [[[id, score], ...], ...]} as JSON
  shard.py upsert PATH FIRST          upsert batches of points from id FIRST, flushing after
                                      each, until killed; prints the count after each flush
"""

import json
import random
import sys

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


if __name__ == "__main__":
    command, path = sys.argv[1], sys.argv[2]
    if command == "create":
        create(path, int(sys.argv[3]), int(sys.argv[4]))
    elif command == "describe":
        describe(path)
    elif command == "upsert":
        upsert(path, int(sys.argv[3]))
    else:
        sys.exit(f"unknown command {command}")
