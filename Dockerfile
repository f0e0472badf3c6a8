# syntax=docker/dockerfile:1
# Consumer image: `docker build -t kafka-parquet-consumer .` then
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e CONSUMER_TOPICS=... -e CONSUMER_GROUP_ID=... \
#     -e CONSUMER_OUTPUT=s3://bucket/prefix kafka-parquet-consumer
#
# Two stages. The builder has Python and a Rust toolchain and turns the source tree into one wheel
# with `pip wheel .`, whatever the build backend is: setuptools (pure Python) today, maturin once the
# native/ crate (the Rust extension) is part of the build. The runtime stage installs only that
# wheel (and its dependencies from PyPI): no compiler, no Rust, no source tree. The sample schemas
# and py.typed travel inside the wheel as package data.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
# The official Rust image's toolchain (same Debian release as the Python image); rustc links with
# the system C compiler, hence gcc/libc6-dev.
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && rustc --version && cargo --version
WORKDIR /src
COPY . .
# Crate downloads are cached between builds (BuildKit); the wheel lands in /dist.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    pip wheel . --no-deps -w /dist \
    && ls -l /dist

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install /dist/*.whl \
    && useradd --system --uid 10001 --no-create-home consumer \
    && consumer --help >/dev/null \
    && python -c "from consumer import samples; assert 'page_view' in samples.schema_names(), samples.SCHEMA_DIR"

USER consumer
# SIGTERM (docker stop / compose down) makes buffered rows durable and committed before exit;
# give it time: compose sets stop_grace_period, `docker stop -t 45` does the same by hand.
STOPSIGNAL SIGTERM
ENTRYPOINT ["consumer"]
CMD ["run"]
