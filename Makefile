.PHONY: build test bench bench-s3 crds

build:
	cargo build --release --locked

# Unit, mock-API-server and integration tests (see scripts/test.sh).
test:
	bash scripts/test.sh

# Engine benchmark against GNU tar + sha256sum (see bench/engine.py).
bench:
	python3 bench/engine.py

# S3 upload/download benchmark against rclone (see bench/s3.py).
bench-s3:
	python3 bench/s3.py

# Regenerate crds/ and charts/snapshot-operator/crds/ from the Rust types.
crds:
	UPDATE_CRDS=1 cargo test --test crds
