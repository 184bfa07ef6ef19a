# syntax=docker/dockerfile:1
#
# The kiln image: a static (musl) kiln and buildctl from the pinned BuildKit release,
# on distroless, running as the non-root user 65532. The rendered Tekton Task, the
# kiln-rotate CronJob and the bootstrap Job all run it.
#
#   docker buildx build -t ghcr.io/kiln-dev/kiln:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/kiln-dev/kiln:0.1.0 --push .
#
# BUILDKIT_VERSION must stay equal to kiln::overlay::DEFAULT_BUILDKIT_VERSION
# (a test in tests/build.rs checks it), so buildctl matches the daemons kiln renders.

ARG RUST_VERSION=1.95.0
ARG BUILDKIT_VERSION=v0.32.2
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/moby/buildkit:${BUILDKIT_VERSION} AS buildkit

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# aws-lc-sys (the crypto library under rustls, rcgen and kube) compiles AWS-LC's C for the
# musl target with the target's musl-gcc (x86_64-linux-musl-gcc, aarch64-linux-musl-gcc);
# no CMake, Go or bindgen is needed for these two targets.
# The version comes with the Debian release of the base image: a pinned .deb would vanish
# from the mirror at its first security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# Build natively on each target platform (x86_64 or aarch64): no cross C toolchain needed.
# The release pipeline builds each platform on a runner of that architecture, no emulation.
RUN arch="$(uname -m)" \
 && case "$arch" in x86_64|aarch64) ;; *) echo "unsupported architecture $arch" >&2; exit 1 ;; esac \
 && rustup target add "$arch-unknown-linux-musl" \
 && echo "$arch-unknown-linux-musl" > /rust-target
WORKDIR /src
# Dependencies first, so a source change does not refetch them.
COPY Cargo.toml Cargo.lock ./
# AWS-LC's build settings (its entropy sources; never a system libcrypto): see the file.
COPY .cargo/config.toml ./.cargo/config.toml
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo fetch --locked --target "$(cat /rust-target)" \
 && rm -rf src
COPY src ./src
# AWS_LC_SYS_USE_SYSTEM=0: always build AWS-LC from the locked source, never link a
# libcrypto found on the build machine. The binary must be static (no ELF interpreter, no
# NEEDED libraries): distroless/static has no libc.
RUN --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && AWS_LC_SYS_USE_SYSTEM=0 cargo build --release --locked --bin kiln --target "$target" \
 && cp "target/$target/release/kiln" /kiln \
 && elf="$(readelf -lW -dW /kiln)" \
 && case "$elf" in *"program interpreter"*|*"(NEEDED)"*) \
      echo "kiln is not statically linked" >&2; exit 1;; \
    esac \
 && /kiln --version

FROM gcr.io/distroless/static-debian12:nonroot
ARG BUILDKIT_VERSION
LABEL org.opencontainers.image.title="kiln" \
      org.opencontainers.image.description="Run a Moby BuildKit build farm on Kubernetes the GitOps way" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.kiln.buildkit.version="${BUILDKIT_VERSION}"
COPY --from=buildkit /usr/bin/buildctl /usr/bin/buildctl
COPY --from=builder /kiln /usr/bin/kiln
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/bin/kiln"]
CMD ["--help"]
