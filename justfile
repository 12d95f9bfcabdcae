# The developer's menu. Every recipe is a plain command you can also type without `just`.

# run the whole platform locally (SQLite + a private nats-server in ./data)
up:
    cargo run -p whistle -- up

# the test suite, as CI runs it
test:
    cargo test --workspace

# formatting and lints, warnings are errors
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# latency and throughput on this machine, with raw JetStream on the same box for the ratio
bench:
    cargo run --release -p whistle -- bench

# compile the contract (protoc checks every file; the generated code must build)
proto-lint:
    cargo build -p whistle-proto

# one department's live whistles, e.g. `just watch zw-sanitation`
watch department:
    cargo run -p whistle -- watch --department {{department}}
