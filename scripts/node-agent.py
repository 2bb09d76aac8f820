#!/usr/bin/env python3
"""The real node's two small services (scripts/node.sh), polling the API server with kubectl:

* a provisioner for the StorageClass `node-hostpath` (the default): a directory under
  VOLUMES (mode 0777, as kind's local-path provisioner makes them) and a hostPath
  PersistentVolume bound to each pending claim; a released volume is deleted with its
  directory;
* cluster DNS: the Services' names (`<name>.<namespace>.svc.cluster.local`, and the pods of
  headless Services as `<pod>.<name>.<namespace>.svc.cluster.local`) written to HOSTS for
  dnsmasq, which is told to read them again (SIGHUP to DNSMASQ_PID) when they change.

  node-agent.py KUBECTL VOLUMES HOSTS DNSMASQ_PID
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

CLASS = "node-hostpath"


def kubectl(*args, stdin=None):
    out = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout


def items(kind):
    return json.loads(kubectl("get", kind, "--all-namespaces", "-o", "json"))["items"]


def provision():
    for claim in items("persistentvolumeclaims"):
        spec, meta = claim["spec"], claim["metadata"]
        if spec.get("storageClassName") != CLASS or spec.get("volumeName"):
            continue
        if claim.get("status", {}).get("phase") != "Pending":
            continue
        path = os.path.join(VOLUMES, meta["uid"])
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
        volume = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{meta['uid']}", "labels": {"snapshot-operator.dev/node-volume": "true"}},
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": CLASS,
                "hostPath": {"path": path, "type": "Directory"},
                "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            kubectl("create", "-f", "-", stdin=json.dumps(volume))
            print(f"provisioned {meta['namespace']}/{meta['name']} at {path}", flush=True)
        except RuntimeError as e:
            if "AlreadyExists" not in str(e):
                print(f"provisioning {meta['namespace']}/{meta['name']}: {e}", flush=True)
    for volume in items("persistentvolumes"):
        if volume["spec"].get("storageClassName") != CLASS:
            continue
        if volume.get("status", {}).get("phase") not in ("Released", "Failed"):
            continue
        path = volume["spec"].get("hostPath", {}).get("path", "")
        if path.startswith(VOLUMES + "/"):
            shutil.rmtree(path, ignore_errors=True)
        kubectl("delete", "persistentvolume", volume["metadata"]["name"], "--wait=false")
        print(f"deleted {volume['metadata']['name']}", flush=True)


def dns(previous):
    lines = []
    for svc in items("services"):
        meta, spec = svc["metadata"], svc["spec"]
        name = f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            lines.append(f"{ip} {name}")
    for pod in items("pods"):
        meta, spec = pod["metadata"], pod["spec"]
        ip = pod.get("status", {}).get("podIP")
        if ip and spec.get("subdomain") and spec.get("hostname"):
            lines.append(f"{ip} {spec['hostname']}.{spec['subdomain']}.{meta['namespace']}.svc.cluster.local")
    text = "\n".join(sorted(lines)) + "\n"
    if text != previous:
        with open(HOSTS + ".new", "w") as f:
            f.write(text)
        os.replace(HOSTS + ".new", HOSTS)
        os.kill(DNSMASQ_PID, signal.SIGHUP)
    return text


if __name__ == "__main__":
    KUBECTL, VOLUMES, HOSTS, DNSMASQ_PID = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.makedirs(VOLUMES, exist_ok=True)
    known = None
    while True:
        try:
            provision()
            known = dns(known)
        except Exception as e:  # the API server restarting, a race with a deletion: next round
            print(f"node-agent: {e}", flush=True)
        time.sleep(1)
