# Build herd from source, then copy the one binary into a small runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# No .git in the build context: `herd --version` shows this instead of the commit
# (docker build --build-arg HERD_BUILD_ID=$(git rev-parse --short=12 HEAD) .).
ARG HERD_BUILD_ID=
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herd && cp target/release/herd /usr/local/bin/herd

FROM debian:bookworm-slim
# ca-certificates: the trust store for rediss://. apt's package lists, its caches and the
# downloaded .deb go in the same layer they came in: a base image without the official slim
# image's apt settings (which already drop them) would otherwise keep ~100 MB of them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin herd
COPY --from=build /usr/local/bin/herd /usr/local/bin/herd
USER herd
ENV HERD_BIND=0.0.0.0:3000
EXPOSE 3000
ENTRYPOINT ["herd"]
CMD ["serve"]
