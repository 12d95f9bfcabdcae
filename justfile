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

# the whole lifecycle on this machine (four service processes, SQLite, 2000 cases), beside raw
# JetStream and insert limits measured in the same run; a few minutes. Flags pass through, e.g.
# `just bench --rate 200 --cases 6000 --json bench.json` or `just bench --postgres postgres://postgres@127.0.0.1:5432/postgres`
bench *flags:
    cargo build --release --bins
    target/release/whistle bench {{flags}}

# the contract: buf lint (STANDARD + comments, proto/buf.yaml), buf format, and the generated code builds
# time `whistle evaluation rebuild` on a generated history of 100,000 cases (docs/evaluation.md)
rebuild-time cases="100000":
    cargo run --release -p whistle-evaluation --example rebuild_time -- {{cases}}

proto-lint:
    npx --yes @bufbuild/buf@1.75.0 lint proto
    npx --yes @bufbuild/buf@1.75.0 format --diff --exit-code proto
    cargo build -p whistle-proto

# everything CI checks (tools installed pinned from npm and PyPI into target/ci-tools), then the tests
ci:
    bash .ci/run

# one department's live whistles, e.g. `just watch zw-sanitation`
watch department:
    cargo run -p whistle -- watch --department {{department}}
