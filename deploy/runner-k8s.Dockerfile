# runner-k8s, the outpost runner whose jobs are Kubernetes pods, on an empty base image.
#
# Built like runner-docker.Dockerfile, from a context that `cargo xtask images` assembles on this
# machine (nothing is pulled): `rootfs/` holds
#   /usr/local/bin/runner-k8s     the release binary with the shared libraries it links;
#   /usr/local/bin/outpost-step   the step wrapper, statically linked (std only): the init
#                                 container of every job pod copies it from this image into the
#                                 pod's shared emptyDir, and each step container runs it, in
#                                 whatever image the step names (one with nothing but `sh` works);
#   git with its HTTP(S) transport helpers and their libraries (the runner clones git sources
#   itself and streams the checkout into the job pod, so step images need no git);
#   a static busybox in /bin (the shell git's local transport needs; `cp` for the wrapper's init
#   container; wget for the health check), CA certificates, /etc/passwd and /etc/group, and the
#   empty directories /var/lib/outpost, /home/outpost and /tmp (mode 1777, kept by COPY).
#
# In the cluster (deploy/helm/outpost-runner, deploy/kubernetes) the runner runs as 10001 with a
# read-only root file system: its state directory, /tmp and its configuration are volumes there,
# and it talks to the API server with its ServiceAccount's token (in-cluster configuration), or
# through KUBECONFIG / --kubeconfig outside a cluster. Kubernetes ignores HEALTHCHECK (the chart
# has readiness on /readyz and liveness on /healthz instead); `docker run` uses it.
FROM scratch
COPY rootfs/ /
# COPY makes every file root's; the directories the runner writes to are its own (owner-only).
RUN ["/bin/chown", "10001:10001", "/var/lib/outpost", "/home/outpost"]
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
LABEL org.opencontainers.image.title="runner-k8s" \
      org.opencontainers.image.description="outpost runner: each job a Kubernetes pod, steps run by outpost-step" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/runner-k8s"]
