#!/usr/bin/env bash
# The end-to-end tests on a real node built on this machine (scripts/node.sh): the node up,
# the CRDs and the chart installed as a user installs them (kubectl apply -f crds/, helm
# install), tests/e2e/run.sh, the node down (by PID, whatever happened). `make e2e-node`
# and `make test` run it; it needs root. Without root it says SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "e2e tier (real node): SKIPPED: a kubelet and containerd need root"
  exit 0
fi
started=$SECONDS
tools="$(bash scripts/tools.sh)"
# shellcheck source=scripts/node.sh
source scripts/node.sh
trap node_stop EXIT
node_stop > /dev/null 2>&1 || true
node_start
export PATH="$APISERVER_CACHE/bin:$tools:$PATH"
echo "e2e: node up in $((SECONDS - started)) s"

# As a user installs it. The 1.20 API server drops the CRDs' CEL rules, which this kubectl
# would refuse to send: --validate=false.
kubectl apply --validate=false -f crds/ > /dev/null
# --skip-crds: they are in already (above); helm 4 would server-side apply them, which
# the 1.20 API server refuses for the same CEL rules.
helm install snapshot-operator charts/snapshot-operator --namespace snapshot-system --skip-crds \
  --create-namespace --wait --timeout 300s \
  --set image.repository=snapshot-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set replicaCount=2 --set-json 'allowedS3Endpoints=["http://s3:9000"]' \
  --set mover.progress.intervalMilliseconds=1000 > /dev/null
kubectl -n snapshot-system get pods -o wide
# The real Qdrant as a workload, where its image was built (scripts/node.sh).
if [ -f "$NODE_DIR/images/qdrant.tar" ]; then
  export E2E_QDRANT_IMAGE=snapshot-operator.local/qdrant:e2e
fi
E2E_IMAGE=snapshot-operator:e2e E2E_S3_MANIFEST=manifests/s3-seaweedfs.yaml bash tests/e2e/run.sh
echo "e2e: the real node's run took $((SECONDS - started)) s"
