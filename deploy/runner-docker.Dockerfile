# runner-docker, the outpost runner whose steps are Docker containers, on an empty base image.
#
# Built by `cargo xtask images` (xtask/src/images.rs), which assembles the build context on this
# machine: `rootfs/` holds the release binary `runner-docker` with the shared libraries it links,
# the host's `git` with its HTTP(S) transport helpers and their libraries (the runner clones git
# sources with the git CLI), a static busybox in /bin (the shell git's local transport needs,
# wget for the health check), CA certificates, /etc/passwd and /etc/group. Nothing is pulled.
#
# The runner talks to the Docker engine through DOCKER_HOST or /var/run/docker.sock, and its job
# containers are siblings of its own. It copies each checkout into the job's workspace volume
# through the engine's API, so its state directory (/var/lib/outpost) is private to it.
#
# User: `outpost` (uid/gid 10001). Reaching a local engine's socket needs the socket's group:
# `docker run --user 10001:$(stat -c %g /var/run/docker.sock)` (or --group-add), or run as root
# (`--user 0:0`). Either way, whoever talks to the engine is root on its host.
FROM scratch
COPY rootfs/ /
# COPY makes every file root's; the directories the runner writes to are its own (owner-only).
RUN ["/bin/chown", "10001:10001", "/var/lib/outpost", "/shared", "/home/outpost"]
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    OUTPOST_STATE_DIR=/var/lib/outpost \
    OUTPOST_METRICS_LISTEN=0.0.0.0:9464
USER 10001:10001
WORKDIR /var/lib/outpost
VOLUME ["/var/lib/outpost"]
EXPOSE 9464
# Against the default metrics address (OUTPOST_METRICS_LISTEN); change both together.
# No `wget -T`: busybox 1.35's static wget crashes with it; --timeout bounds the check instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9464/healthz"]
LABEL org.opencontainers.image.title="runner-docker" \
      org.opencontainers.image.description="outpost runner: job steps as Docker containers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/runner-docker"]
