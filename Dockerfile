# syntax=docker/dockerfile:1
# ddnn tier node image. Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t ddnn .
# (each platform builds natively under buildx/QEMU; arm64 suits Raspberry Pi-class edge boxes).
#
# Two ways to fill the same runtime stage (`base`, below) with ddnn and ONNX Runtime:
#   docker build -t ddnn .                    default target `runtime` (BuildKit): ddnn built from
#                                             source (stage `build`), the library from PyPI (`ort`)
#   docker build --target prebuilt -t ddnn .  a host-built ddnn and library from dist/
#                                             (scripts/images.sh runtime fills dist/); for a host
#                                             without a registry or BuildKit (the classic builder
#                                             builds the stages before the target only)

FROM debian:bookworm-slim AS base
# Nothing from apt: libstdc++6 (ONNX Runtime's) is already in the slim base, and the health
# check is bash's /dev/tcp (curl and its libraries were 11 MB).
RUN useradd --system --uid 10001 --home-dir /opt/ddnn ddnn
COPY nodes/node/healthcheck.sh /usr/local/bin/ddnn-healthcheck
COPY models /opt/ddnn/models
COPY topology /opt/ddnn/topology
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.1.31.1
WORKDIR /opt/ddnn
USER ddnn
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD ["ddnn-healthcheck", "/healthz"]
ENTRYPOINT ["ddnn"]
CMD ["--help"]

# Prebuilt: `objcopy --strip-debug target/release/ddnn dist/ddnn` (a Debian bookworm host: same
# glibc) and dist/libonnxruntime.so.1.31.1 of the target architecture.
FROM base AS prebuilt
COPY dist/ddnn /usr/local/bin/ddnn
COPY dist/libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1.31.1

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY nodes nodes
# Debug info stripped (symbols kept for backtraces): ~83 MB -> ~12 MB, for small edge devices.
RUN cargo build --release -p ddnn \
    && objcopy --strip-debug target/release/ddnn /usr/local/bin/ddnn

# ONNX Runtime shared library from the PyPI wheel matching the target architecture. pip download
# --platform fetches a foreign wheel from any host, so this stage runs natively ($BUILDPLATFORM,
# which BuildKit always sets; the fallback is for the classic builder, which leaves it empty and
# fails on `--platform=` with "failed to parse platform").
FROM --platform=${BUILDPLATFORM:-linux/amd64} python:3.11-slim-bookworm AS ort
ARG TARGETARCH
RUN set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) plat=manylinux_2_28_x86_64 ;; \
      arm64) plat=manylinux_2_28_aarch64 ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    pip download --no-deps --only-binary=:all: --platform "$plat" --python-version 3.11 -d /wheel onnxruntime==1.31.1; \
    python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); open('/libonnxruntime.so.1.31.1', 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.1.31.1'))"

FROM base AS runtime
COPY --from=build /usr/local/bin/ddnn /usr/local/bin/ddnn
COPY --from=ort /libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1.31.1
