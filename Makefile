# Recipes match scripts/test (what CI runs, after installing the tools); `make ci` is it
# without the installation.
.PHONY: ci fmt lint test images containers bench demo doubles run-example

ci: fmt lint test images containers

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	cargo test --workspace

# The images, built without a registry (debootstrap for the base image, binaries from the host).
images:
	scripts/images

# docker-compose.yml's fleet and the chaos scenarios on containers (needs `make images`).
containers:
	cargo test -p chaos --test compose --test scenarios -- --ignored --test-threads 1

demo:
	cargo run -p gateway -- demo

bench:
	cargo bench -p gateway --bench cache_hit

# The fake IdP on :4444 and echo upstreams on :8081/:8082 that the example configuration uses.
doubles:
	GW_SECRET=$${GW_SECRET:-example-secret} cargo run -p chaos -- doubles

# Runs a node on the example configuration (start `make doubles` first).
run-example:
	GW_SECRET=$${GW_SECRET:-example-secret} cargo run -p gateway -- run --config deploy/gateway.example.yaml
