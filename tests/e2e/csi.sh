#!/usr/bin/env bash
# Installs what copyMethod Clone and Snapshot need into the cluster kubectl points at: the
# VolumeSnapshot CRDs and snapshot controller (external-snapshotter), the CSI hostpath driver
# (it clones volumes and takes VolumeSnapshots of them), the StorageClass `csi-hostpath-sc`
# and the VolumeSnapshotClass `csi-hostpath-snapclass`. Versions are pinned; does nothing
# when the StorageClass is already there.
set -euo pipefail

SNAPSHOTTER_VERSION="${SNAPSHOTTER_VERSION:-v8.6.0}"
HOSTPATH_VERSION="${HOSTPATH_VERSION:-v1.18.0}"

if kubectl get storageclass csi-hostpath-sc >/dev/null 2>&1; then
  echo "csi: csi-hostpath-sc exists, nothing to install"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet --depth 1 --branch "$SNAPSHOTTER_VERSION" \
  https://github.com/kubernetes-csi/external-snapshotter "$work/snapshotter"
git clone --quiet --depth 1 --branch "$HOSTPATH_VERSION" \
  https://github.com/kubernetes-csi/csi-driver-host-path "$work/hostpath"

kubectl apply -k "$work/snapshotter/client/config/crd"
kubectl wait --for=condition=Established --timeout=60s \
  crd/volumesnapshots.snapshot.storage.k8s.io \
  crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io
kubectl apply -k "$work/snapshotter/deploy/kubernetes/snapshot-controller"
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=300s

# Deploys the driver (and its VolumeSnapshotClass) into the default namespace.
"$work/hostpath/deploy/kubernetes-latest/deploy.sh"
kubectl -n default rollout status statefulset/csi-hostpathplugin --timeout=300s

kubectl apply -f - <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: csi-hostpath-sc
provisioner: hostpath.csi.k8s.io
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML
kubectl get volumesnapshotclass csi-hostpath-snapclass >/dev/null
echo "csi: snapshot controller $SNAPSHOTTER_VERSION, hostpath driver $HOSTPATH_VERSION installed"
