# outpost-hub, the reference control plane, on an empty base image.
#
# Built by `cargo xtask images` (xtask/src/images.rs), which assembles the build context on this
# machine: `rootfs/` holds the release binaries `outpost-hub` and `outpost` (the CLI) with the
# shared libraries they link (glibc and its loader), a static busybox in /bin (a shell for the
# compose `init` service, wget for the health check), CA certificates, /etc/passwd and
# /etc/group. Nothing is pulled from a registry.
#
# The hub runs as `outpost` (uid/gid 10001); its database lives in the volume at /data.
FROM scratch
COPY rootfs/ /
# COPY makes every file root's; the two directories the hub writes to are its own (owner-only).
RUN ["/bin/chown", "10001:10001", "/data", "/shared", "/home/outpost"]
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    OUTPOST_HUB_LISTEN=0.0.0.0:8080 \
    OUTPOST_HUB_DATABASE=/data/hub.db
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Against the default listen address; change both together.
# No `wget -T`: busybox 1.35's static wget crashes with it; --timeout bounds the check instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
LABEL org.opencontainers.image.title="outpost-hub" \
      org.opencontainers.image.description="outpost reference control plane (HTTP API, SQLite)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/outpost-hub"]
CMD ["serve"]
