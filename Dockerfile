# taskstream container image: worker, orchestrator and CLI in one binary.
#
#   docker build -t taskstream:local .
#   docker run --rm -v $PWD/config/taskstream.toml:/etc/taskstream/taskstream.toml:ro \
#     -e TASKSTREAM_REDIS_URL=redis://redis:6379 taskstream:local
#
# The build stage is pinned to the bookworm variant of rust:1.88 so that the binary links
# against the same glibc as the debian:bookworm-slim runtime (a plain rust:1.88 tag may be
# rebuilt on a newer Debian).

FROM rust:1.88-bookworm AS build
WORKDIR /build
# Manifests first, then sources; load-tests/ holds the second binary target of Cargo.toml.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY load-tests ./load-tests
RUN cargo build --release --locked \
 && cp target/release/taskstream /usr/local/bin/taskstream \
 && /usr/local/bin/taskstream --version

FROM debian:bookworm-slim
# ca-certificates for rediss:// and HTTPS handlers; curl for container health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin taskstream
COPY --from=build /usr/local/bin/taskstream /usr/local/bin/taskstream
USER taskstream
# Inside a container the HTTP server (/metrics, /health, /ready) must listen on all
# interfaces to be scraped; the built-in default is 127.0.0.1:9464.
ENV TASKSTREAM_HTTP_LISTEN=0.0.0.0:9464
EXPOSE 9464
# SIGTERM starts a graceful drain (worker.shutdown_grace_ms, default 30 s).
STOPSIGNAL SIGTERM
CMD ["taskstream", "worker", "--config", "/etc/taskstream/taskstream.toml"]
