# The load balancer of docker-compose.yml: Debian's HAProxy on the same base image as
# tokengate's (scripts/images builds it; no registry needed). The configuration is mounted at
# /usr/local/etc/haproxy/haproxy.cfg, where the official haproxy image reads it too.
ARG DEBIAN=bookworm
FROM debian:${DEBIAN}-slim
LABEL org.opencontainers.image.title=tokengate
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
USER haproxy
# Healthy once the stats listener accepts (it binds with the proxy's, in the same process).
HEALTHCHECK --interval=2s --timeout=2s --retries=15 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8404"]
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
