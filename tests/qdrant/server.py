"""The real Qdrant server's REST API, for tests/qdrant_server.rs (standard library only).

  server.py wait URL                        until /readyz answers (60 s at most)
  server.py fill URL COLLECTION COUNT SEED SHARDS [REPLICAS]
                                            a collection of COUNT 64-dimensional points in
                                            SHARDS shards (of REPLICAS replicas each, in a
                                            cluster), a payload index and an alias
                                            `<collection>-alias`
  server.py describe URL COLLECTION         {"count": N, "queries": [...], "aliases": [...]}
  server.py snapshot URL COLLECTION OUT     Qdrant's collection snapshot, downloaded to OUT
  server.py shard-snapshot URL COLLECTION SHARD OUT
  server.py full-snapshot URL OUT
  server.py upload URL COLLECTION FILE PRIORITY
  server.py recover URL COLLECTION LOCATION PRIORITY
  server.py write URL COLLECTION SECONDS    upserts points (ids from 1000000, vectors no query
                                            finds: every component negative) for SECONDS;
                                            prints how many
  server.py snapshots URL [COLLECTION]      the names of the snapshots on Qdrant's disk (JSON)
  server.py delete URL COLLECTION FROM TO   deletes the points FROM..TO (ids)
  server.py shards URL COLLECTION           the ids of the shards this peer holds (JSON)
  server.py settle URL COLLECTION           until every replica this peer knows of is Active
                                            and no shard is in transfer (120 s at most)

With QDRANT_API_KEY in the environment, every request carries it as the api-key header; with
QDRANT_CA (a PEM file), an https Qdrant's certificate is checked against it.
"""

import json
import os
import random
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid

DIMS = 64
BATCH = 500
TLS = ssl.create_default_context(cafile=os.environ.get("QDRANT_CA") or None)


def urlopen(request, timeout):
    return urllib.request.urlopen(request, timeout=timeout, context=TLS)


def call(method, url, body=None, headers=None, timeout=300):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if os.environ.get("QDRANT_API_KEY"):
        request.add_header("api-key", os.environ["QDRANT_API_KEY"])
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url} answered {e.code}: {e.read().decode(errors='replace')}")


def result(method, url, body=None):
    return json.loads(call(method, url, body))["result"]


def wait(url):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urlopen(f"{url}/readyz", timeout=2):
                return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"{url} did not get ready")


def fill(url, collection, count, seed, shards, replicas=1):
    result("PUT", f"{url}/collections/{collection}", {
        "vectors": {"size": DIMS, "distance": "Cosine"},
        "shard_number": shards,
        "replication_factor": replicas,
    })
    rnd = random.Random(seed)
    points = [
        {"id": i, "vector": [rnd.random() for _ in range(DIMS)], "payload": {"n": i, "seed": seed}}
        for i in range(count)
    ]
    for k in range(0, count, BATCH):
        result("PUT", f"{url}/collections/{collection}/points?wait=true",
               {"points": points[k:k + BATCH]})
    result("PUT", f"{url}/collections/{collection}/index?wait=true",
           {"field_name": "n", "field_schema": "integer"})
    result("POST", f"{url}/collections/aliases", {"actions": [
        {"create_alias": {"collection_name": collection, "alias_name": f"{collection}-alias"}}
    ]})


def describe(url, collection):
    count = result("POST", f"{url}/collections/{collection}/points/count", {"exact": True})["count"]
    rnd = random.Random(12345)
    queries = []
    for _ in range(3):
        vector = [rnd.random() for _ in range(DIMS)]
        hits = result("POST", f"{url}/collections/{collection}/points/query",
                      {"query": vector, "limit": 10, "with_payload": True})["points"]
        queries.append([[hit["id"], round(hit["score"], 5), hit["payload"]["n"]] for hit in hits])
    aliases = sorted(
        a["alias_name"] for a in result("GET", f"{url}/collections/{collection}/aliases")["aliases"]
    )
    print(json.dumps({"count": count, "queries": queries, "aliases": aliases}))


def download(url, out):
    with urlopen(url, timeout=300) as response, open(out, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def snapshot(url, collection, out):
    name = result("POST", f"{url}/collections/{collection}/snapshots?wait=true")["name"]
    download(f"{url}/collections/{collection}/snapshots/{name}", out)


def shard_snapshot(url, collection, shard, out):
    base = f"{url}/collections/{collection}/shards/{shard}/snapshots"
    name = result("POST", f"{base}?wait=true")["name"]
    download(f"{base}/{name}", out)


def full_snapshot(url, out):
    name = result("POST", f"{url}/snapshots?wait=true")["name"]
    download(f"{url}/snapshots/{name}", out)


def upload(url, collection, path, priority):
    boundary = uuid.uuid4().hex
    with open(path, "rb") as f:
        data = f.read()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; "
        f"filename=\"upload.snapshot\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/collections/{collection}/snapshots/upload?wait=true&priority={priority}",
        data=body, method="POST")
    request.add_header("content-type", f"multipart/form-data; boundary={boundary}")
    if os.environ.get("QDRANT_API_KEY"):
        request.add_header("api-key", os.environ["QDRANT_API_KEY"])
    try:
        with urlopen(request, timeout=300) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as e:
        sys.exit(f"upload answered {e.code}: {e.read().decode(errors='replace')}")


def recover(url, collection, location, priority):
    print(json.dumps(result("PUT", f"{url}/collections/{collection}/snapshots/recover?wait=true",
                            {"location": location, "priority": priority})))


def write(url, collection, seconds):
    rnd = random.Random(7)
    deadline = time.time() + seconds
    written = 0
    while time.time() < deadline:
        points = [
            {"id": 1000000 + written + i, "vector": [-rnd.random() - 0.01 for _ in range(DIMS)],
             "payload": {"n": 1000000 + written + i}}
            for i in range(20)
        ]
        result("PUT", f"{url}/collections/{collection}/points?wait=true", {"points": points})
        written += len(points)
    print(written)


def snapshots(url, collection=None):
    path = f"{url}/collections/{collection}/snapshots" if collection else f"{url}/snapshots"
    print(json.dumps(sorted(s["name"] for s in result("GET", path))))


def delete(url, collection, first, last):
    result("POST", f"{url}/collections/{collection}/points/delete?wait=true",
           {"points": list(range(first, last))})


def shards(url, collection):
    cluster = result("GET", f"{url}/collections/{collection}/cluster")
    print(json.dumps(sorted(s["shard_id"] for s in cluster["local_shards"])))


def settle(url, collection):
    deadline = time.time() + 120
    while time.time() < deadline:
        cluster = result("GET", f"{url}/collections/{collection}/cluster")
        replicas = cluster["local_shards"] + cluster["remote_shards"]
        if not cluster["shard_transfers"] and all(r["state"] == "Active" for r in replicas):
            return
        time.sleep(0.2)
    sys.exit(f"{collection} at {url} did not settle: {json.dumps(cluster)}")


if __name__ == "__main__":
    command, url = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if command == "wait":
        wait(url)
    elif command == "fill":
        fill(url, args[0], *map(int, args[1:]))
    elif command == "describe":
        describe(url, args[0])
    elif command == "snapshot":
        snapshot(url, args[0], args[1])
    elif command == "shard-snapshot":
        shard_snapshot(url, args[0], args[1], args[2])
    elif command == "full-snapshot":
        full_snapshot(url, args[0])
    elif command == "upload":
        upload(url, args[0], args[1], args[2])
    elif command == "recover":
        recover(url, args[0], args[1], args[2])
    elif command == "write":
        write(url, args[0], float(args[1]))
    elif command == "snapshots":
        snapshots(url, *args)
    elif command == "delete":
        delete(url, args[0], int(args[1]), int(args[2]))
    elif command == "shards":
        shards(url, args[0])
    elif command == "settle":
        settle(url, args[0])
    else:
        sys.exit(f"unknown command {command}")
