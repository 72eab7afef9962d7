# syntax=docker/dockerfile:1
#
# The postmesh image: one binary on a distroless base (glibc, no shell).
# The same image runs every part of the mesh; the argument picks which:
#
#   docker build -t postmesh .
#   docker run --rm -p 8080:8080 -p 50051:50051 postmesh            # `postmesh dev`: everything, embedded backends
#   docker run --rm postmesh serve content                          # one service (what Kubernetes runs)
#   docker run --rm postmesh migrate                                # apply migrations and exit
#
# The run stage has no shell and no package manager; the binary runs as
# uid/gid 65532 (distroless "nonroot"), numerically, so Kubernetes can
# verify runAsNonRoot. The build and run stages are both Debian 12
# (bookworm), so the binary links against the glibc it runs on. For
# reproducible production builds, pin both base images by digest.

ARG RUST_VERSION=1.95

# ---- build -----------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Everything cargo needs to resolve the workspace; .dockerignore keeps out
# target/, data/, tool caches, docs and the chart.
COPY . .

# Protobufs are compiled by protox (pure Rust) and TLS is rustls on aws-lc,
# so the image's C toolchain is all the build needs. The caches keep the
# registry and target directory between builds; the binary is copied out
# of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin postmesh \
    && install -D -m 0755 target/release/postmesh /out/usr/local/bin/postmesh \
    && install -d -m 0750 /out/var/lib/postmesh

# ---- run -------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

# The data directory exists and belongs to the runtime user; in Kubernetes
# it is an emptyDir (the root filesystem is read-only there).
COPY --from=build --chown=65532:65532 /out/var/lib/postmesh /var/lib/postmesh
COPY --from=build /out/usr/local/bin/postmesh /usr/local/bin/postmesh

# Listen on all interfaces inside the container (the built-in defaults are
# loopback, right for a laptop, useless in a container). Flags and other
# POSTMESH_* variables still override these.
ENV POSTMESH_LISTEN=0.0.0.0:50051 \
    POSTMESH_HTTP_LISTEN=0.0.0.0:8080 \
    POSTMESH_ADMIN_LISTEN=0.0.0.0:9090 \
    POSTMESH_DATA_DIR=/var/lib/postmesh

# gRPC (services), HTTP (gateway), admin (/metrics, /health/*).
EXPOSE 50051 8080 9090

USER 65532:65532
WORKDIR /var/lib/postmesh
ENTRYPOINT ["/usr/local/bin/postmesh"]
CMD ["dev"]
