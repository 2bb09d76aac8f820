#!/usr/bin/env python3
"""Mover slots on a real node: COUNT Snapshots of the claim CLAIM made at once, through the
operator's SLOTS slots, then deleted at once.

Usage: slots.py NAMESPACE CLAIM COUNT SLOTS S3-STORAGE-JSON

It watches the mover Jobs, their pods and the Snapshots (each event timed as it arrives here)
and prints where a slot-use goes:

* the Job controller: a Job created -> its pod created;
* the kubelet and the mover: the pod created -> its end seen, split by the kubelet's own
  timestamps (whole seconds): the container started, the mover ran, its end reported;
* the operator: the pod's end seen -> its Snapshot Ready, and a slot freed -> the next Job.

It fails if more mover pods run at once than there are slots (one pod watch, in the API
server's order: a pod ends before the Job that takes its slot is made), if the Snapshots are
not all Ready or gone within five minutes, or if deleting them took a delete mover each (one
deletes the archives of every Snapshot deleted by then).
"""

import atexit
import datetime
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

OPERATION = "snapshot-operator.dev/operation"
TIMEOUT = 300.0


class Watch:
    """The events of one watch, each with its arrival time (seconds of the wall clock, which
    the API server's and the kubelet's timestamps on the same machine share)."""

    def __init__(self, path):
        self.events = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["kubectl", "get", "--raw", path], stdout=subprocess.PIPE, text=True
        )
        # Stopped however this ends.
        atexit.register(self.stop)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                event = json.loads(line)
                with self.lock:
                    self.events.append((time.time(), event["type"], event["object"]))

    def seen(self):
        with self.lock:
            return list(self.events)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def watch(collection, selector=None):
    query = {"watch": "1"}
    if selector:
        query["labelSelector"] = selector
    return Watch(f"{collection}?{urllib.parse.urlencode(query)}")


def kubectl(*args, stdin=None):
    subprocess.run(["kubectl", *args], input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)


def until(what, done):
    deadline = time.time() + TIMEOUT
    while not done():
        if time.time() > deadline:
            sys.exit(f"slots: timed out waiting for {what}")
        time.sleep(0.1)


def first(events, name, test):
    """When the object `name` was first seen passing `test`."""
    return next((t for t, _, o in events if o["metadata"]["name"] == name and test(o)), None)


def mover_state(pod):
    for c in pod.get("status", {}).get("containerStatuses") or []:
        if c["name"] == "mover":
            return c.get("state", {})
    return {}


def stamp(text):
    """An API timestamp (whole seconds, UTC) as seconds of the wall clock."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def ready(snapshot):
    conditions = snapshot.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def owner(obj):
    refs = obj["metadata"].get("ownerReferences") or [{}]
    return refs[0].get("name")


def median_max(values):
    return f"{statistics.median(values) * 1000:.0f} ms (max {max(values) * 1000:.0f} ms)"


def most_at_once(spans):
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def main():
    ns, claim, count, slots, storage = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    names = [f"slot-{i}" for i in range(count)]
    jobs = watch(f"/apis/batch/v1/namespaces/{ns}/jobs", OPERATION)
    pods = watch(f"/api/v1/namespaces/{ns}/pods", OPERATION)
    snaps = watch(f"/apis/snapshot-operator.dev/v1alpha1/namespaces/{ns}/snapshots")
    time.sleep(1)  # the watches have begun
    items = [
        {
            "apiVersion": "snapshot-operator.dev/v1alpha1",
            "kind": "Snapshot",
            "metadata": {"name": n},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": claim}},
                     "storage": json.loads(storage), "deletionPolicy": "Delete"},
        }
        for n in names
    ]
    started = time.time()
    kubectl("-n", ns, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    until("all Snapshots Ready", lambda: all(first(snaps.seen(), n, ready) for n in names))
    # The last pods' ends, which may come after their Snapshots were Ready.
    time.sleep(1)
    job_events, pod_events, snap_events = jobs.seen(), pods.seen(), snaps.seen()
    all_ready = max(first(snap_events, n, ready) for n in names) - started

    movers = {}
    for _, _, job in job_events:
        if job["metadata"]["labels"].get(OPERATION) == "snapshot" and owner(job) in names:
            movers.setdefault(job["metadata"]["name"], owner(job))
    if len(movers) != count:
        sys.exit(f"slots: {len(movers)} snapshot movers for {count} Snapshots")
    rows = []
    for job, snapshot in movers.items():
        made = first(job_events, job, lambda o: True)
        pod = next((o["metadata"]["name"] for _, _, o in pod_events if owner(o) == job), None)
        if pod is None:
            sys.exit(f"slots: no pod of {job} was seen")
        seen, ended = next(((t, o) for t, _, o in pod_events
                            if o["metadata"]["name"] == pod and "terminated" in mover_state(o)), (None, None))
        if ended is None:
            sys.exit(f"slots: the end of pod {pod} was not seen")
        terminated = mover_state(ended)["terminated"]
        rows.append({
            "made": made,
            "pod": first(pod_events, pod, lambda o: True),
            "ended": seen,
            "ready": first(snap_events, snapshot, ready),
            # The kubelet's own timestamps, in whole seconds.
            "created": stamp(ended["metadata"]["creationTimestamp"]),
            "started": stamp(terminated["startedAt"]),
            "finished": stamp(terminated["finishedAt"]),
        })
    if any(v is None for r in rows for v in r.values()):
        sys.exit(f"slots: a mover's start or end was not seen: {rows}")
    at_once = most_at_once([(r["pod"], r["ended"]) for r in rows])
    if at_once > slots:
        sys.exit(f"slots: {at_once} mover pods at once, {slots} slots")
    made = sorted(r["made"] for r in rows)
    ended = sorted(r["ended"] for r in rows)
    handed = [made[k + slots] - ended[k] for k in range(count - slots)]
    def median(key):
        return statistics.median(key(r) for r in rows)

    print(
        f"slots: {count} Snapshots, {slots} slots: all Ready after {all_ready:.2f} s, "
        f"{all_ready * slots / count:.2f} s a slot-use, at most {at_once} movers at once; "
        f"medians (max) per mover: Job -> pod created {median_max([r['pod'] - r['made'] for r in rows])} "
        f"(the Job controller); pod created -> its end seen {median_max([r['ended'] - r['pod'] for r in rows])} "
        f"(the kubelet and the mover; by the kubelet's timestamps, in whole seconds: pod created -> "
        f"mover started {median(lambda r: r['started'] - r['created']):.1f} s, the mover ran "
        f"{median(lambda r: r['finished'] - r['started']):.1f} s, it finished -> its end seen "
        f"{median(lambda r: r['ended'] - r['finished']):.1f} s); its end seen -> Snapshot Ready "
        f"{median_max([r['ready'] - r['ended'] for r in rows])} (the operator); "
        f"a slot freed -> the next Job {median_max(handed) if handed else 'n/a'} (the operator)"
    )

    deleting = time.time()
    kubectl("-n", ns, "delete", "snapshot", *names, "--wait=false")
    def gone():
        return {o["metadata"]["name"]: t for t, type_, o in snaps.seen() if type_ == "DELETED"}

    until("all Snapshots gone", lambda: all(n in gone() for n in names))
    took = max(gone()[n] for n in names) - deleting
    deleters = {o["metadata"]["name"] for _, _, o in jobs.seen()
                if o["metadata"]["labels"].get(OPERATION) == "delete" and owner(o) in names}
    if not 1 <= len(deleters) < count:
        sys.exit(f"slots: {len(deleters)} delete movers for {count} Snapshots")
    print(f"slots: {count} Snapshots deleted in {took:.2f} s by {len(deleters)} delete movers")


if __name__ == "__main__":
    main()
