.PHONY: build test bench crd e2e

build:
	cargo build --release --locked

# Unit, mock-API-server and integration tests (see scripts/test.sh).
test:
	bash scripts/test.sh

# Engine benchmark against GNU tar + sha256sum (see bench/engine.py).
bench:
	python3 bench/engine.py
