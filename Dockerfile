# skewless: the feature server and CLI, with the StreamFlow feature repo and the example
# transformation plugins.
#
#   docker build -t skewless .
#   docker compose up -d        # see docker-compose.yml

# ---- build: the server (release) and the plugins (wasm32-wasip2) ----
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY wit ./wit
COPY templates ./templates
COPY plugins ./plugins
COPY feature_repo ./feature_repo
RUN cargo build --release --locked --bin skewless
RUN cd plugins && cargo build --release --locked --target wasm32-wasip2

# ---- runtime: slim, non-root ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app --uid 10001 skewless
WORKDIR /app
COPY --from=build /src/target/release/skewless /usr/local/bin/skewless
COPY --from=build /src/feature_repo ./feature_repo
COPY --from=build /src/plugins/target/wasm32-wasip2/release/churn_signals.wasm ./plugins/
COPY --from=build /src/plugins/target/wasm32-wasip2/release/tenure_bucket.wasm ./plugins/
RUN mkdir -p /app/data && chown -R skewless:skewless /app
USER skewless
ENV SKEWLESS_SERVER__BIND=0.0.0.0:8000
# `apply` reads the plugins here; servers load the applied bytes from the registry.
ENV SKEWLESS_PLUGINS__DIR=/app/plugins
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["skewless", "--repo", "/app/feature_repo"]
CMD ["serve"]
