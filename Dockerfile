# syntax=docker/dockerfile:1
# Multi-stage build: a Rust builder, then a distroless runtime (same Debian release, glibc).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ficus \
 && cp target/release/ficus /ficus

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ficus /usr/local/bin/ficus
COPY routes.toml /etc/ficus/routes.toml
# Non-root (uid 65532), ports above 1024. Mount the table directory (a ConfigMap)
# at /etc/ficus; never with subPath, or updates never arrive.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/ficus"]
CMD ["serve", "--config", "/etc/ficus/routes.toml"]
