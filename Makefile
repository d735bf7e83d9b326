# Recipes match .ci/run; `make ci` is what CI runs.
.PHONY: ci fmt lint test bench demo

ci: fmt lint test

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	cargo test --workspace

bench:
	cargo bench -p gateway --bench cache_hit

# Runs a node on the example configuration (needs an IdP on :4444 and an upstream on :8081).
run-example:
	GW_SECRET=$${GW_SECRET:-example-secret} cargo run -p gateway -- run --config deploy/gateway.example.yaml
