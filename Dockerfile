# The operator image: one static-ish binary (controller, mover engine, CLI) on distroless.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked \
    && strip target/release/snapshot-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/snapshot-operator /usr/local/bin/snapshot-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/snapshot-operator"]
