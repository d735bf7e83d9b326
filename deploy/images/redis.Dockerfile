# Redis for docker-compose.yml's `redis` profile: Debian's redis-server on the same base image as
# tokengate's (scripts/images builds it; no registry needed). It requires the password in
# REDIS_PASSWORD, written to a configuration file on a tmpfs rather than passed as an argument
# (arguments are visible to every process listing on the host).
ARG DEBIAN=bookworm
FROM debian:${DEBIAN}-slim
LABEL org.opencontainers.image.title=tokengate
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && mkdir -p /data && chown redis:redis /data
COPY redis-start /usr/local/bin/redis-start
USER redis
WORKDIR /data
HEALTHCHECK --interval=2s --timeout=2s --retries=15 \
    CMD ["sh", "-c", "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping | grep -q PONG"]
ENTRYPOINT ["/usr/local/bin/redis-start"]
