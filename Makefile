.PHONY: build test bench crd e2e

build:
	cargo build --release --locked

# Unit, mock-API-server and integration tests (see scripts/test.sh).
test:
	bash scripts/test.sh

# Engine benchmark against GNU tar + sha256sum (see bench/engine.sh).
bench:
	bash bench/engine.sh
