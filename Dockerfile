# Trial Lifecycle Manager: build the release binary, then run it in a slim image as a non-root user.

FROM rust:1-bookworm AS builder
WORKDIR /code
# config/ is compiled into the binary (the built-in defaults), so it is needed to build.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked

FROM debian:bookworm-slim
# CA certificates: outbound HTTPS checks the platform's services against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system lcm \
    && useradd --system --gid lcm --home-dir /code --no-create-home --shell /usr/sbin/nologin lcm
WORKDIR /code
COPY --from=builder /code/target/release/lcm /usr/local/bin/lcm
# Picked up as config/default.toml in the working directory; mount your own over it to change it.
COPY config/ /code/config/
# Only the directories the service writes to belong to its user.
RUN mkdir -p /code/logs /code/data && chown lcm:lcm /code/logs /code/data
ENV LCM__LOGGING__DIR=/code/logs \
    LCM__STORE__DATA_DIR=/code/data
EXPOSE 5000
USER lcm
CMD ["lcm", "serve"]
