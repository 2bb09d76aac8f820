#!/usr/bin/env bash
# End-to-end tests against the cluster kubectl points at (KUBECONFIG / current context), with
# the operator installed (`make e2e` creates a kind cluster and installs everything first).
# Skips, with a message, when no cluster is reachable.
#
# Env: E2E_NAMESPACE (default snapshot-e2e), E2E_IMAGE (operator image, for debug pods),
# E2E_S3_MANIFEST (the S3 server: manifests/s3.yaml, MinIO from its registry, or
# manifests/s3-seaweedfs.yaml on the real node, which has no registry).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "e2e: SKIPPED: kubectl is not installed (and no cluster to test against)"
  exit 0
fi
if ! kubectl cluster-info >/dev/null 2>&1; then
  echo "e2e: SKIPPED: no Kubernetes cluster is reachable (set KUBECONFIG, or run 'make e2e')"
  exit 0
fi

NS="${E2E_NAMESPACE:-snapshot-e2e}"
IMAGE="${E2E_IMAGE:-snapshot-operator:e2e}"
k() { kubectl -n "$NS" "$@"; }
fail() { echo "e2e: FAILED: $*" >&2; k get snapshots,snapshotrestores,jobs,pods -o wide >&2 || true; exit 1; }
pass() { echo "e2e: ok ($((SECONDS)) s): $*"; }
jp() { k get "$1" -o jsonpath="$2"; }

# Waits for a jsonpath value.
wait_for() { # resource jsonpath expected [timeout-seconds]
  local deadline=$((SECONDS + ${4:-300}))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(jp "$1" "$2" 2>/dev/null)" = "$3" ] && return 0
    sleep 2
  done
  fail "$1 $2 never became $3 (it is '$(jp "$1" "$2" 2>/dev/null)')"
}

# The leading operator replica's metric sample, e.g. `name{label="v"}` (0 when absent).
leader_metric() { # sample
  local leader
  leader="$(kubectl -n "$OPERATOR_NS" get lease -o jsonpath='{.items[0].spec.holderIdentity}')"
  local text
  text="$(kubectl get --raw "/api/v1/namespaces/$OPERATOR_NS/pods/$leader:8080/proxy/metrics")" \
    || fail "cannot read the metrics of the leader $leader"
  echo "$text" | awk -v s="$1" '$1 == s {print $2; found = 1} END {if (!found) print 0}'
}

# Waits until a namespaced object is gone.
wait_gone() { # kind/name [timeout-seconds]
  local deadline=$((SECONDS + ${2:-180}))
  while k get "$1" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$1 was not deleted"
    sleep 2
  done
}

# Runs a command in a throwaway pod of the operator image with S3 or local storage mounted.
storage_pod() { # name storage(s3|local) command...
  local name="$1" storage="$2"; shift 2
  local env='[]' volumes='[]' mounts='[]'
  if [ "$storage" = s3 ]; then
    env='[{"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH","value":"e2e"},
          {"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__SNAPSHOTS_STORAGE","value":"s3"},
          {"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__BUCKET","value":"snapshots"},
          {"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ENDPOINT_URL","value":"http://s3:9000"},
          {"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ACCESS_KEY","valueFrom":{"secretKeyRef":{"name":"e2e-s3","key":"AWS_ACCESS_KEY_ID"}}},
          {"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__SECRET_KEY","valueFrom":{"secretKeyRef":{"name":"e2e-s3","key":"AWS_SECRET_ACCESS_KEY"}}},
          {"name":"SNAPSHOT_OPERATOR_LOG","value":"warn"}]'
  else
    env='[{"name":"SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH","value":"/snapshots/archives"},{"name":"SNAPSHOT_OPERATOR_LOG","value":"warn"}]'
    volumes='[{"name":"s","persistentVolumeClaim":{"claimName":"snapshots"}}]'
    mounts='[{"name":"s","mountPath":"/snapshots"}]'
  fi
  local args
  args="$(printf '%s\n' "$@" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')"
  k delete pod "$name" --ignore-not-found --wait >/dev/null
  k apply -f - >/dev/null <<YAML
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$name"},
 "spec":{"restartPolicy":"Never","volumes":$volumes,
  "containers":[{"name":"c","image":"$IMAGE","imagePullPolicy":"IfNotPresent","args":$args,"env":$env,"volumeMounts":$mounts}]}}
YAML
  local deadline=$((SECONDS + 180)) phase=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase="$(jp "pod/$name" '{.status.phase}')"
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 2
  done
  k logs "$name"
  [ "$phase" = Succeeded ] || fail "pod $name: $phase"
}

exec_cat() { k exec "$1" -c db -- cat "$2"; }
# Runs a shell command in busybox with a claim at /s; prints its output.
on_claim() { # claim pod-name command
  k apply -f - >/dev/null <<YAML
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"$2"},"spec":{"restartPolicy":"Never",
 "volumes":[{"name":"s","persistentVolumeClaim":{"claimName":"$1"}}],
 "containers":[{"name":"c","image":"docker.io/library/busybox:1.37","command":["sh","-c",$(
  python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$3")],
  "volumeMounts":[{"name":"s","mountPath":"/s"}]}]}}
YAML
  wait_for "pod/$2" '{.status.phase}' Succeeded 120
  k logs "$2"
  k delete pod "$2" >/dev/null
}

# Makes a claim and fills it by a shell command in busybox (the claim at /s).
filled_claim() { # name size command
  k apply -f - >/dev/null <<YAML
{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"$1"},
 "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"$2"}}}}
YAML
  on_claim "$1" "fill-$1" "$3" >/dev/null
}

echo "e2e: namespace $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
k apply -f "${E2E_S3_MANIFEST:-manifests/s3.yaml}" >/dev/null
k apply -f manifests/workloads.yaml >/dev/null
k wait --for=condition=complete job/s3-bucket --timeout=300s >/dev/null
k rollout status statefulset/qdrant --timeout=300s >/dev/null
k rollout status statefulset/fresh --timeout=300s >/dev/null
pass "S3 server, StatefulSets and storage are up"

# --- Invalid specs: refused by the API server, or flagged InvalidSpec ----------------------
if k apply -f - >/dev/null 2>&1 <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: both-sources}
spec:
  source:
    statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}
    persistentVolumeClaim: {claimName: snapshots}
YAML
then
  # Only servers without CEL (before 1.25) take it: then the operator flags it.
  wait_for snapshot/both-sources '{.status.conditions[?(@.type=="Ready")].reason}' InvalidSpec 60
fi
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: missing-workload}
spec:
  source: {statefulSet: {name: does-not-exist, volumeClaimTemplate: qdrant-storage}}
  storage: {local: {persistentVolumeClaim: {claimName: snapshots}}}
YAML
wait_for snapshot/missing-workload '{.status.conditions[?(@.type=="Ready")].reason}' InvalidSpec 60
pass "invalid specs are refused or flagged InvalidSpec"

# --- Snapshot of one collection to local-volume storage -------------------------------------
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: products-local}
spec:
  source: {statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}}
  path: /
  collection: products
  storage: {local: {persistentVolumeClaim: {claimName: snapshots}, path: /archives}}
  deletionPolicy: Delete
YAML
k wait --for=condition=Ready snapshot/products-local --timeout=300s >/dev/null || fail "products-local not Ready"
[ "$(jp snapshot/products-local '{.status.nodes}')" = 2 ] || fail "expected 2 archives"
for i in 0 1; do
  name="$(jp snapshot/products-local "{.status.archives[$i].name}")"
  sum="$(jp snapshot/products-local "{.status.archives[$i].checksum}")"
  # The archive and its sidecar match the status (GNU-compatible sha256 from busybox).
  out="$(on_claim snapshots "sum-$i" "cd /s/archives/products && sha256sum $name && cat $name.checksum")"
  [ "$(echo "$out" | head -1 | cut -d' ' -f1)" = "$sum" ] || fail "archive $name does not match its status checksum"
  [ "$(echo "$out" | tail -1)" = "$sum" ] || fail "sidecar of $name does not match"
done
kubectl get snapshots -n "$NS"
pass "collection snapshot to local storage: 2 archives, checksums match"

# --- Full-storage snapshot to S3 ---------------------------------------------------------
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: full-s3}
spec:
  source: {statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}}
  storage:
    s3: {bucket: snapshots, endpointUrl: "http://s3:9000", prefix: e2e, credentialsSecret: {name: e2e-s3}}
  deletionPolicy: Retain
YAML
k wait --for=condition=Ready snapshot/full-s3 --timeout=300s >/dev/null || fail "full-s3 not Ready"
full0="$(jp snapshot/full-s3 '{.status.archives[0].name}')"
# Downloading verifies the archive against its checksum object.
storage_pod verify-s3 s3 snapshot download "$full0" -o /tmp/full.snapshot >/dev/null
pass "full-storage snapshot to S3, archive verified against its checksum"

# --- Restores into the fresh StatefulSet: stopWorkload, mapping by ordinal ------------------
restore() { # name priority [collection]
  local collection=""
  [ -n "${3:-}" ] && collection="collection: $3"
  k apply -f - >/dev/null <<YAML
apiVersion: snapshot-operator.dev/v1alpha1
kind: SnapshotRestore
metadata: {name: $1}
spec:
  source: {snapshotRef: {name: ${4:-products-local}}}
  target: {statefulSet: {name: fresh, volumeClaimTemplate: qdrant-storage}}
  $collection
  priority: $2
  stopWorkload: true
YAML
  k wait --for=condition=Ready "snapshotrestore/$1" --timeout=400s >/dev/null || fail "restore $1 not Ready"
  k rollout status statefulset/fresh --timeout=300s >/dev/null
  [ "$(jp statefulset/fresh '{.spec.replicas}')" = 2 ] || fail "fresh not scaled back to 2"
}
node_phases() { jp "snapshotrestore/$1" '{.status.nodes[*].phase}'; }

restore r-absent replica products
[ "$(node_phases r-absent)" = "Restored Restored" ] || fail "r-absent: $(node_phases r-absent)"
[ "$(exec_cat fresh-0 /qdrant/storage/collections/products/data.txt)" = "products from qdrant-0" ] || fail "fresh-0 data"
[ "$(exec_cat fresh-1 /qdrant/storage/collections/products/data.txt)" = "products from qdrant-1" ] || fail "fresh-1 data"
pass "restore (absent target) with stopWorkload: data verified inside the restarted pods"

k exec fresh-0 -c db -- sh -c 'echo local > /qdrant/storage/collections/products/extra.txt'
restore r-replica replica products
[ "$(node_phases r-replica)" = "Skipped Skipped" ] || fail "r-replica: $(node_phases r-replica)"
exec_cat fresh-0 /qdrant/storage/collections/products/extra.txt >/dev/null || fail "replica removed data"
restore r-nosync no_sync products
[ "$(node_phases r-nosync)" = "Restored Restored" ] || fail "r-nosync: $(node_phases r-nosync)"
exec_cat fresh-0 /qdrant/storage/collections/products/extra.txt >/dev/null || fail "no_sync removed data"
restore r-snapshot snapshot products
[ "$(node_phases r-snapshot)" = "Restored Restored" ] || fail "r-snapshot: $(node_phases r-snapshot)"
if exec_cat fresh-0 /qdrant/storage/collections/products/extra.txt >/dev/null 2>&1; then fail "snapshot priority kept old files"; fi
[ "$(exec_cat fresh-0 /qdrant/storage/collections/products/data.txt)" = "products from qdrant-0" ] || fail "r-snapshot data"
pass "priorities: replica skips, no_sync merges, snapshot replaces"

restore r-full snapshot "" full-s3
[ "$(exec_cat fresh-1 /qdrant/storage/collections/reviews/data.txt)" = "reviews from qdrant-1" ] || fail "full restore data"
pass "full-storage restore from S3 with stopWorkload"

# --- Deletion: Delete removes the archives, Retain keeps them -----------------------------
k delete snapshot products-local --timeout=300s >/dev/null || fail "products-local not deleted"
storage_pod list-local local snapshot list --collection products -o json > /tmp/e2e-list.json
grep -q '\[\]' /tmp/e2e-list.json || { cat /tmp/e2e-list.json; fail "Delete kept archives"; }
k delete snapshot full-s3 --timeout=300s >/dev/null || fail "full-s3 not deleted"
storage_pod list-s3 s3 snapshot list -o json | grep -q "$full0" || fail "Retain lost the archive"
pass "deletionPolicy Delete removes archives, Retain keeps them"

# --- copyMethod Stop: the StatefulSet at zero while its movers read, then back -----------
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: products-stop}
spec:
  source: {statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}}
  path: /
  collection: products
  copyMethod: Stop
  storage: {local: {persistentVolumeClaim: {claimName: snapshots}, path: /archives}}
  deletionPolicy: Delete
YAML
lowest=2 deadline=$((SECONDS + 300))
until [ "$(jp snapshot/products-stop '{.status.conditions[?(@.type=="Ready")].status}')" = True ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "products-stop not Ready"
  replicas="$(jp statefulset/qdrant '{.spec.replicas}' || echo 2)"
  [ "${replicas:-2}" -lt "$lowest" ] && lowest="$replicas"
  sleep 1
done
[ "$lowest" = 0 ] || fail "copyMethod Stop: qdrant never scaled to 0 (lowest seen: $lowest)"
[ "$(jp snapshot/products-stop '{.status.stoppedReplicas}')" = 2 ] || fail "stoppedReplicas not recorded"
k rollout status statefulset/qdrant --timeout=300s >/dev/null
[ "$(jp statefulset/qdrant '{.spec.replicas}')" = 2 ] || fail "qdrant not scaled back to 2"
[ "$(exec_cat qdrant-1 /qdrant/storage/collections/products/data.txt)" = "products from qdrant-1" ] \
  || fail "qdrant-1 lost its data"
pass "copyMethod Stop: StatefulSet 2 -> 0 while the movers read, back to 2, data intact"

# --- A schedule: a Snapshot a minute, only the newest kept; its Snapshots outlive it -------
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: SnapshotSchedule
metadata: {name: minutely}
spec:
  schedule: "@every 1m"
  template:
    source: {statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}}
    path: /
    collection: reviews
    storage: {local: {persistentVolumeClaim: {claimName: snapshots}, path: /archives}}
    deletionPolicy: Delete
  retention: {keepLast: 1}
YAML
first="" second="" deadline=$((SECONDS + 420))
until [ -n "$second" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "schedule minutely: no second successful Snapshot"
  last="$(jp snapshotschedule/minutely '{.status.lastSuccessfulSnapshot}' || true)"
  if [ -z "$first" ]; then first="$last"; elif [ "$last" != "$first" ]; then second="$last"; fi
  sleep 5
done
wait_gone "snapshot/$first" 180
k delete snapshotschedule minutely >/dev/null
# Owned objects would be collected (or carry a deletion time) by now.
sleep 15
kept="$(jp "snapshot/$second" '{.metadata.name}{.metadata.deletionTimestamp}{.metadata.ownerReferences}' || true)"
[ "$kept" = "$second" ] || fail "deleting the schedule took its Snapshot $second ('$kept')"
k delete snapshots -l snapshot-operator.dev/schedule=minutely --timeout=300s >/dev/null
pass "schedule: a Snapshot a minute, the older pruned by keepLast 1, its Snapshot kept when it goes"

# --- Leader failover: the leading replica killed, the other takes over ----------------------
OPERATOR_NS="${E2E_OPERATOR_NAMESPACE:-snapshot-system}"
replicas="$(kubectl -n "$OPERATOR_NS" get deployment snapshot-operator -o jsonpath='{.status.readyReplicas}' 2>/dev/null || echo 0)"
if [ "${replicas:-0}" -ge 2 ]; then
  leader="$(kubectl -n "$OPERATOR_NS" get lease -o jsonpath='{.items[0].spec.holderIdentity}')"
  [ -n "$leader" ] || fail "no replica holds the Lease"
  kubectl -n "$OPERATOR_NS" delete pod "$leader" --grace-period=0 --force >/dev/null 2>&1 || fail "cannot delete the leader $leader"
  k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: after-failover}
spec:
  source: {statefulSet: {name: qdrant, volumeClaimTemplate: qdrant-storage}}
  collection: reviews
  storage: {local: {persistentVolumeClaim: {claimName: snapshots}, path: /archives}}
YAML
  k wait --for=condition=Ready snapshot/after-failover --timeout=300s >/dev/null || fail "after-failover not Ready"
  now="$(kubectl -n "$OPERATOR_NS" get lease -o jsonpath='{.items[0].spec.holderIdentity}')"
  [ -n "$now" ] && [ "$now" != "$leader" ] || fail "the Lease is still held by $leader"
  k delete snapshot after-failover --timeout=300s >/dev/null || fail "after-failover not deleted"
  pass "leader failover: $leader killed, $now leads, a new Snapshot is taken"
else
  echo "e2e: leader failover: SKIPPED: the operator runs $replicas ready replica(s); install it with replicaCount=2"
fi

# --- A namespace deleted with its Snapshots (deletionPolicy Delete) is not held up ----------
GONE="$NS-gone"
kubectl create namespace "$GONE" >/dev/null
kubectl -n "$GONE" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: archives}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}
---
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: doomed}
spec:
  source: {persistentVolumeClaim: {claimName: data}}
  storage: {local: {persistentVolumeClaim: {claimName: archives}}}
  deletionPolicy: Delete
YAML
kubectl -n "$GONE" wait --for=condition=Ready snapshot/doomed --timeout=300s >/dev/null || fail "doomed not Ready"
kubectl delete namespace "$GONE" --wait=false >/dev/null
deadline=$((SECONDS + 240))
while kubectl get namespace "$GONE" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || fail "namespace $GONE still there after 240 s: $(kubectl -n "$GONE" get snapshots -o jsonpath='{.items[*].metadata.finalizers}' 2>&1)"
  sleep 2
done
pass "a namespace deleted with a Snapshot (Delete) goes, its archives with their claim"

# --- copyMethod Clone and Snapshot (the CSI hostpath driver: tests/e2e/csi.sh) -------------
# A Snapshot of the "csi" StatefulSet with a copy method; checks that its pods ran on
# undisturbed, that each archive names its temporary claim (and VolumeSnapshot), that these
# are deleted, and that a restore of it gives each pod of "fresh" its own node's data.
copy_method() { # name method extra-spec
  local uids
  uids="$(k get pods -l app=csi -o jsonpath='{.items[*].metadata.uid}')" || fail "cannot list the csi pods"
  k apply -f - >/dev/null <<YAML
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: $1}
spec:
  source: {statefulSet: {name: csi, volumeClaimTemplate: qdrant-storage}}
  path: /
  collection: products
  copyMethod: $2
  $3
  storage: {local: {persistentVolumeClaim: {claimName: snapshots}, path: /archives}}
  deletionPolicy: Delete
YAML
  k wait --for=condition=Ready "snapshot/$1" --timeout=400s >/dev/null || fail "$1 not Ready"
  [ "$(k get pods -l app=csi -o jsonpath='{.items[*].metadata.uid}')" = "$uids" ] || fail "$1: the csi pods were restarted"
  local i claim vs
  for i in 0 1; do
    claim="$(jp "snapshot/$1" "{.status.archives[$i].readFrom}" || true)"
    [ -n "$claim" ] || fail "$1: archive $i names no claim it was read from"
    wait_gone "pvc/$claim"
    if [ "$2" = Snapshot ]; then
      vs="$(jp "snapshot/$1" "{.status.archives[$i].volumeSnapshot}" || true)"
      [ -n "$vs" ] || fail "$1: archive $i names no VolumeSnapshot"
      wait_gone "volumesnapshot/$vs"
    fi
  done
  restore "r-$1" snapshot products "$1"
  [ "$(exec_cat fresh-0 /qdrant/storage/collections/products/data.txt)" = "products from csi-0" ] || fail "r-$1: fresh-0 data"
  [ "$(exec_cat fresh-1 /qdrant/storage/collections/products/data.txt)" = "products from csi-1" ] || fail "r-$1: fresh-1 data"
  pass "copyMethod $2: pods undisturbed, temporary objects deleted, restored node by node"
}
# --- The real Qdrant: points snapshotted with copyMethod Stop, restored, found again -------
# Qdrant's API is reached at the pod's address (this machine is on the pods' bridge).
qdrant_api() { # method path [json]
  local ip
  ip="$(jp pod/vectors-0 '{.status.podIP}')"
  curl -sSf -X "$1" -H 'Content-Type: application/json' "http://$ip:6333$2" ${3:+-d "$3"}
}
qdrant_field() { # python expression over the answer's `result`
  python3 -c "import json, sys; result = json.load(sys.stdin)['result']; print($1)"
}
if [ -n "${E2E_QDRANT_IMAGE:-}" ]; then
  k apply -f manifests/qdrant.yaml >/dev/null
  k rollout status statefulset/vectors --timeout=300s >/dev/null || fail "Qdrant did not start"
  qdrant_api PUT /collections/products '{"vectors": {"size": 4, "distance": "Dot"}}' >/dev/null
  points="$(python3 -c 'import json
print(json.dumps({"points": [{"id": i, "vector": [i % 7, i % 5, i % 3, 1.0 + i / 100],
                              "payload": {"n": i}} for i in range(1, 501)]}))')"
  qdrant_api PUT '/collections/products/points?wait=true' "$points" >/dev/null
  query='{"vector": [0.5, 0.2, 0.9, 0.1], "limit": 5}'
  before="$(qdrant_api POST /collections/products/points/search "$query" | qdrant_field '[p["id"] for p in result]')"
  k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: vectors-stop}
spec:
  source: {statefulSet: {name: vectors, volumeClaimTemplate: qdrant-storage}}
  path: /
  collection: products
  copyMethod: Stop
  storage: {local: {persistentVolumeClaim: {claimName: vectors-snapshots}}}
  deletionPolicy: Delete
YAML
  k wait --for=condition=Ready snapshot/vectors-stop --timeout=300s >/dev/null || fail "vectors-stop not Ready"
  # In Qdrant's own format: the real Qdrant recovers the archive into a second collection,
  # fetched over http from a pod serving the claim (busybox httpd).
  name="$(jp snapshot/vectors-stop '{.status.archives[0].name}')"
  k apply -f - >/dev/null <<'YAML'
{"apiVersion":"v1","kind":"Pod","metadata":{"name":"vectors-files"},"spec":{
 "securityContext":{"runAsUser":1000,"runAsGroup":1000},"volumes":[{"name":"s","persistentVolumeClaim":{"claimName":"vectors-snapshots"}}],
 "containers":[{"name":"c","image":"docker.io/library/busybox:1.37",
  "command":["httpd","-f","-p","8080","-h","/s"],"volumeMounts":[{"name":"s","mountPath":"/s"}]}]}}
YAML
  wait_for pod/vectors-files '{.status.phase}' Running 120
  k rollout status statefulset/vectors --timeout=300s >/dev/null
  location="http://$(jp pod/vectors-files '{.status.podIP}'):8080/products/$name"
  for _ in $(seq 30); do curl -sf -o /dev/null "$location" && break; sleep 1; done
  qdrant_api PUT '/collections/recovered/snapshots/recover?wait=true' \
    "{\"location\": \"$location\", \"priority\": \"snapshot\"}" >/dev/null \
    || fail "Qdrant did not recover vectors-stop's archive from $location"
  k delete pod vectors-files >/dev/null
  count="$(qdrant_api GET /collections/recovered | qdrant_field 'result["points_count"]')"
  [ "$count" = 500 ] || fail "Qdrant recovered $count points from our archive, not 500"
  recovered="$(qdrant_api POST /collections/recovered/points/search "$query" | qdrant_field '[p["id"] for p in result]')"
  [ "$recovered" = "$before" ] || fail "search in the recovered collection: $recovered, before: $before"
  k rollout status statefulset/vectors --timeout=300s >/dev/null
  qdrant_api DELETE /collections/products >/dev/null
  # What the leader has counted of restore movers so far (checked after the two below).
  movers_metric='snapshot_operator_mover_duration_seconds_count{operation="restore"}'
  bytes_metric='snapshot_operator_restored_bytes_total'
  movers_before="$(leader_metric "$movers_metric")"
  bytes_before="$(leader_metric "$bytes_metric")"
  k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: SnapshotRestore
metadata: {name: vectors-back}
spec:
  source: {snapshotRef: {name: vectors-stop}}
  target: {statefulSet: {name: vectors, volumeClaimTemplate: qdrant-storage}}
  collection: products
  priority: snapshot
  stopWorkload: true
YAML
  k wait --for=condition=Ready snapshotrestore/vectors-back --timeout=400s >/dev/null || fail "vectors-back not Ready"
  k rollout status statefulset/vectors --timeout=300s >/dev/null
  count="$(qdrant_api GET /collections/products | qdrant_field 'result["points_count"]')"
  [ "$count" = 500 ] || fail "the restored collection holds $count points, not 500"
  after="$(qdrant_api POST /collections/products/points/search "$query" | qdrant_field '[p["id"] for p in result]')"
  [ "$after" = "$before" ] || fail "search after the restore: $after, before: $before"
  restored_bytes="$(jp snapshotrestore/vectors-back '{.status.nodes[*].bytes}')"
  k delete snapshotrestore vectors-back >/dev/null
  k delete snapshot vectors-stop --timeout=300s >/dev/null || fail "vectors-stop not deleted"
  pass "the real Qdrant: 500 points snapshotted with copyMethod Stop, recovered by Qdrant's own API from our archive and restored by a SnapshotRestore after the collection was deleted: 500 points and the same search results each time"

  # copyMethod QdrantAPI: the running Qdrant makes its own snapshot, reached at its pod's
  # name behind the StatefulSet's service (the node's DNS); never stopped, no volume mounted.
  pod_uid="$(jp pod/vectors-0 '{.metadata.uid}')"
  k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: vectors-api}
spec:
  source: {statefulSet: {name: vectors, volumeClaimTemplate: qdrant-storage}}
  collection: products
  copyMethod: QdrantAPI
  storage: {local: {persistentVolumeClaim: {claimName: vectors-snapshots}}}
YAML
  k wait --for=condition=Ready snapshot/vectors-api --timeout=300s >/dev/null || fail "vectors-api not Ready"
  [ "$(qdrant_api GET /collections/products/snapshots | qdrant_field 'len(result)')" = 0 ] \
    || fail "Qdrant's snapshot was left on its disk"
  # Recovered by the running Qdrant through its API into another collection.
  k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: SnapshotRestore
metadata: {name: vectors-api-back}
spec:
  source: {snapshotRef: {name: vectors-api}}
  target: {statefulSet: {name: vectors, volumeClaimTemplate: qdrant-storage}}
  collection: through-api
  priority: snapshot
  method: QdrantAPI
YAML
  k wait --for=condition=Ready snapshotrestore/vectors-api-back --timeout=300s >/dev/null \
    || fail "vectors-api-back not Ready"
  count="$(qdrant_api GET /collections/through-api | qdrant_field 'result["points_count"]')"
  [ "$count" = 500 ] || fail "recovered through the API: $count points, not 500"
  found="$(qdrant_api POST /collections/through-api/points/search "$query" | qdrant_field '[p["id"] for p in result]')"
  [ "$found" = "$before" ] || fail "search in the collection recovered through the API: $found, before: $before"
  [ "$(jp pod/vectors-0 '{.metadata.uid}')" = "$pod_uid" ] || fail "Qdrant was restarted"
  [ "$(qdrant_api GET /collections/through-api/snapshots | qdrant_field 'len(result)')" = 0 ] \
    || fail "the uploaded snapshot was left on Qdrant's disk"
  restored_bytes="$restored_bytes $(jp snapshotrestore/vectors-api-back '{.status.nodes[*].bytes}')"
  # Two restore movers, each counted once, with the bytes their nodes' status gives (read
  # again a few seconds later: a second count would show).
  sleep 5
  movers=$(( $(leader_metric "$movers_metric") - movers_before ))
  bytes=$(( $(leader_metric "$bytes_metric") - bytes_before ))
  expected_bytes=$(( $(echo "$restored_bytes" | tr ' ' '\n' | awk '{s += $1} END {print s + 0}') ))
  [ "$movers" = 2 ] || fail "the leader counted $movers restore movers for the two restores, not 2"
  [ "$bytes" = "$expected_bytes" ] || fail "the leader counted $bytes restored bytes, not $expected_bytes ($restored_bytes)"
  k delete snapshotrestore vectors-api-back >/dev/null
  k delete snapshot vectors-api --timeout=300s >/dev/null || fail "vectors-api not deleted"
  pass "the real Qdrant through its API (copyMethod QdrantAPI, method QdrantAPI): snapshotted and recovered while it ran, 500 points and the same search results, nothing left on its disk; the two restores' movers counted once in the leader's metrics ($bytes bytes)"
else
  echo "e2e: the real Qdrant as a workload: SKIPPED: no Qdrant image (build the Qdrant binary once with ../shared/tools/build-qdrant.sh)"
fi

# --- Progress: a 300 MB mover's bytes seen moving in the status ----------------------------
# (The chart is installed with mover.progress.intervalMilliseconds=1000: read every second.)
filled_claim bulk 512Mi "mkdir -p /s/data && head -c 314572800 /dev/urandom > /s/data/blob"
k apply -f - >/dev/null <<'YAML'
apiVersion: snapshot-operator.dev/v1alpha1
kind: Snapshot
metadata: {name: bulk}
spec:
  source: {persistentVolumeClaim: {claimName: bulk}}
  storage:
    s3: {bucket: snapshots, endpointUrl: "http://s3:9000", prefix: e2e-bulk, credentialsSecret: {name: e2e-s3}}
  deletionPolicy: Delete
YAML
seen="" deadline=$((SECONDS + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
  done_bytes="$(jp snapshot/bulk '{.status.archives[0].progress.bytesDone}' 2>/dev/null || true)"
  case " $seen " in *" $done_bytes "*) ;; *) [ -n "$done_bytes" ] && seen="$seen $done_bytes" ;; esac
  [ "$(jp snapshot/bulk '{.status.phase}' 2>/dev/null)" = Succeeded ] && break
  sleep 0.3
done
k wait --for=condition=Ready snapshot/bulk --timeout=10s >/dev/null || fail "bulk not Ready"
[ -n "$seen" ] || fail "no progress of the bulk mover was seen in its status"
[ -z "$(jp snapshot/bulk '{.status.archives[0].progress}')" ] || fail "progress left in a finished archive"
reads="$(leader_metric 'snapshot_operator_progress_reads_total{result="read"}')"
[ "$reads" -gt 0 ] || fail "the leader read no mover's progress"
k delete snapshot bulk --wait=true >/dev/null
pass "progress of a 300 MB mover seen in its status (bytesDone:$seen), from $reads log reads"

# --- Mover slots: eight Snapshots at once through the chart's four slots, then deleted -----
# slots.py prints where a slot-use goes (the Job controller, the kubelet, the mover, the
# operator) and fails on more movers at once than slots, or a delete mover per Snapshot.
filled_claim tiny 16Mi "echo hello > /s/hello"
slots="$(python3 slots.py "$NS" tiny 8 4 \
  '{"s3": {"bucket": "snapshots", "endpointUrl": "http://s3:9000", "prefix": "e2e-slots", "credentialsSecret": {"name": "e2e-s3"}}}')" \
  || fail "mover slots: $slots"
echo "$slots"
pass "mover slots: eight Snapshots through four slots, deleted by fewer delete movers"

if kubectl get storageclass csi-hostpath-sc >/dev/null 2>&1 \
  && kubectl get volumesnapshotclass csi-hostpath-snapclass >/dev/null 2>&1; then
  k apply -f manifests/csi.yaml >/dev/null
  k rollout status statefulset/csi --timeout=300s >/dev/null
  copy_method products-clone Clone ""
  copy_method products-csi Snapshot "volumeSnapshotClassName: csi-hostpath-snapclass"
elif [ "${E2E_REQUIRE_CSI:-}" = 1 ]; then
  fail "no StorageClass csi-hostpath-sc or VolumeSnapshotClass csi-hostpath-snapclass (tests/e2e/csi.sh)"
else
  echo "e2e: copyMethod Clone and Snapshot: SKIPPED: no CSI hostpath driver (run tests/e2e/csi.sh)"
fi

echo "e2e: all passed"
