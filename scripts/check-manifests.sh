#!/usr/bin/env bash
# Checks what users install: `helm lint --strict`, the rendered chart, the CRDs and the e2e
# suite's workloads against Kubernetes 1.37's schemas (kubernetes-validate --strict), and the
# example custom resources against our CRDs' schemas (check-jsonschema); and the GitHub
# workflows (actionlint).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(bash scripts/tools.sh):$PATH"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

chart=charts/snapshot-operator
cat > "$out/all-values.yaml" <<'YAML'
replicaCount: 2
maxConcurrentMoversPerNamespace: 2
allowedS3Endpoints: [aws, "http://minio:9000"]
defaultStorage:
  s3: {bucket: snapshots, endpointUrl: "http://minio:9000", credentialsSecret: {name: s3}}
catalogImport:
  intervalSeconds: 60
  credentialsSecret: {name: operator-s3}
mover:
  podSecurityContext: {runAsNonRoot: true, runAsUser: 1000}
  allowRoot: true
metrics:
  serviceMonitor: {enabled: true}
YAML
actionlint .github/workflows/*.yml

helm lint --strict "$chart"
helm lint --strict "$chart" -f "$out/all-values.yaml"

for values in "" "-f $out/all-values.yaml"; do
  # shellcheck disable=SC2086
  helm template snapshot-operator "$chart" --namespace snapshot-system --include-crds $values \
    > "$out/rendered.yaml"
  # ServiceMonitor is a Prometheus Operator type: not in Kubernetes' schemas.
  python3 - "$out/rendered.yaml" "$out/core.yaml" <<'PY'
import sys
docs = open(sys.argv[1]).read().split("\n---")
keep = [d for d in docs if "kind: ServiceMonitor" not in d and d.strip()]
open(sys.argv[2], "w").write("\n---".join(keep))
PY
  kubernetes-validate --strict --kubernetes-version 1.37.0 "$out/core.yaml"
  # The operator accepts the configuration the chart renders.
  python3 - "$out/rendered.yaml" "$out/operator.yaml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        open(sys.argv[2], "w").write(doc["data"]["operator.yaml"])
PY
  target/debug/snapshot-operator controller --operator-config "$out/operator.yaml" --check-config >/dev/null
done
kubernetes-validate --strict --kubernetes-version 1.37.0 crds/*.yaml
# Example manifests of Kubernetes' own kinds.
for example in examples/kubernetes/*.yaml; do
  if ! grep -q "^apiVersion: snapshot-operator.dev/" "$example"; then
    kubernetes-validate --strict --kubernetes-version 1.37.0 "$example"
  fi
done

# The e2e suite's workloads.
kubernetes-validate --strict --kubernetes-version 1.37.0 tests/e2e/manifests/*.yaml

# Custom resources against the CRDs' own schemas.
for crd in crds/*.yaml; do
  kind="$(python3 -c "import sys; print(next(l.split(':')[1].strip() for l in open(sys.argv[1]) if l.strip().startswith('kind:') and 'CustomResourceDefinition' not in l))" "$crd")"
  python3 - "$crd" "$out/$kind.schema.json" <<'PY'
import json, sys
import yaml
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
open(sys.argv[2], "w").write(json.dumps(schema))
PY
  for example in examples/kubernetes/*.yaml; do
    if grep -q "^kind: $kind\$" "$example"; then
      check-jsonschema --schemafile "$out/$kind.schema.json" "$example"
    fi
  done
done
echo "manifests: ok"
