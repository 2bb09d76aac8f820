.PHONY: build test bench bench-sparse bench-s3 crds e2e e2e-node e2e-clean

build:
	cargo build --release --locked

# Unit, mock-API-server and integration tests (see scripts/test.sh).
test:
	bash scripts/test.sh

# Engine benchmark against GNU tar + sha256sum (see bench/engine.py).
bench:
	python3 bench/engine.py

# Real Qdrant shards (files with holes) against GNU tar's sparse mode (see bench/sparse.py).
bench-sparse:
	python3 bench/sparse.py

# S3 upload/download benchmark against rclone (see bench/s3.py).
bench-s3:
	python3 bench/s3.py

# Regenerate crds/ and charts/snapshot-operator/crds/ from the Rust types.
crds:
	UPDATE_CRDS=1 cargo test --test crds

# End-to-end tests on kind (needs Docker, kind, kubectl and helm): creates the cluster,
# builds and loads the image, installs the CSI hostpath driver (tests/e2e/csi.sh), the CRDs
# and the chart, runs tests/e2e/run.sh.
E2E_CLUSTER ?= snapshot-operator-e2e
E2E_IMAGE ?= snapshot-operator:e2e
e2e:
	kind get clusters | grep -qx $(E2E_CLUSTER) || kind create cluster --config tests/e2e/kind.yaml --name $(E2E_CLUSTER)
	docker build -t $(E2E_IMAGE) .
	kind load docker-image $(E2E_IMAGE) --name $(E2E_CLUSTER)
	bash tests/e2e/csi.sh
	kubectl apply --server-side -f crds/
	helm upgrade --install snapshot-operator charts/snapshot-operator \
	  --namespace snapshot-system --create-namespace --wait \
	  --set image.repository=$(firstword $(subst :, ,$(E2E_IMAGE))) \
	  --set image.tag=$(lastword $(subst :, ,$(E2E_IMAGE))) --set image.pullPolicy=Never \
	  --set replicaCount=2 --set-json 'allowedS3Endpoints=["http://s3:9000"]' \
	  --set mover.progress.intervalMilliseconds=1000
	E2E_IMAGE=$(E2E_IMAGE) E2E_REQUIRE_CSI=1 bash tests/e2e/run.sh

# End-to-end tests on a real node built on this machine (kubelet, containerd, the image
# built without Docker; see scripts/node.sh): needs root.
e2e-node:
	cargo build --release --locked
	bash tests/e2e/node.sh

e2e-clean:
	kind delete cluster --name $(E2E_CLUSTER)
