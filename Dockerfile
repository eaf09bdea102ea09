# syntax=docker/dockerfile:1
# mvllm in a small image: the router, and `mvllm sim` for demos (docker-compose.yml).
#
#   docker build -t mvllm .
#   docker run -p 8888:8888 -v $(pwd)/servers.toml:/app/servers.toml mvllm
#
# The Python mvllm's `docker run` line works unchanged: the config is /app/servers.toml and
# the port 8888. See README.md, "Docker".

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Pingora's zlib-ng build needs cmake. (Not pinned: a build-stage tool, and Debian replaces
# package versions in place, so a pin would break the build at the next point release.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# No debug line tables in the image's binary (19 MB instead of 100 MB); function names stay,
# so a backtrace still says where.
ENV CARGO_PROFILE_RELEASE_DEBUG=none

# The dependencies alone first, in a layer rebuilt only when Cargo.toml or Cargo.lock change:
# the manifest with empty targets (the [[bench]] entries must exist for Cargo to read it).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && mkdir bench \
    && sed -n 's/^path = "\(bench\/[a-z_]*\.rs\)"$/\1/p' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "$bench"; done \
    && cargo build --release --locked --bin mvllm \
    && rm -rf src

# Then mvllm itself (touched: the copied files may be older than the stubs' build).
COPY src src
COPY conf conf
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin mvllm \
    && cp target/release/mvllm /usr/local/bin/mvllm

FROM debian:bookworm-slim AS runtime
# No shell tools are needed at run time: the health check is `mvllm health`.
RUN groupadd --system --gid 10001 mvllm \
    && useradd --system --uid 10001 --gid mvllm --home-dir /app --shell /usr/sbin/nologin mvllm \
    && mkdir -p /app \
    && chown mvllm:mvllm /app
COPY --from=build /usr/local/bin/mvllm /usr/local/bin/mvllm
COPY --chown=mvllm:mvllm servers.example.toml /app/servers.toml
WORKDIR /app
USER 10001:10001
EXPOSE 8888
# 200 while at least one server is healthy (see README, "Endpoints of the router").
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["mvllm", "health", "--url", "http://127.0.0.1:8888/health", "--timeout", "4"]
# SIGTERM (docker stop) drains: no new connections, in-flight requests and streams finish,
# then mvllm exits; give it the grace period (`docker stop -t 40`, compose
# stop_grace_period: 40s). No terminal in a container: --console logs, one line per request.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mvllm"]
CMD ["run", "--console", "--host", "0.0.0.0", "--port", "8888", "--config", "/app/servers.toml"]
