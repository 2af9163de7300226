# The rbd-mirror-reconciler controller image.
#
#   make image        builds it here, from a Debian base bootstrapped locally (no registry)
#   docker build .    anywhere a registry is reachable (BASE_IMAGE defaults to Docker Hub's)
#
# Ceph's Python bindings must match the Ceph client libraries they load, so both come from
# Debian (python3-rados, python3-rbd); the project and its pure-Python dependencies live in a
# venv next to them that sees just those two modules (a symlink each), not the rest of Debian's
# dist-packages. Extra CA certificates (a TLS-intercepting proxy in front of PyPI) can be passed
# as the build secret `extra-ca`: only the build stage sees them, and that stage is not shipped.
# No `# syntax=` line on purpose: it would pull a frontend image from a registry.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
# One step so the extra CAs exist only while pip runs. Dependencies come as wheels only: no
# compiler is needed here, and none could be shipped by accident.
RUN --mount=type=secret,id=extra-ca \
    set -eu; \
    if [ -s /run/secrets/extra-ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra-ca > /tmp/ca-bundle.pem; \
        export PIP_CERT=/tmp/ca-bundle.pem; \
    fi; \
    python3 -m venv /opt/tools; \
    /opt/tools/bin/pip wheel -q --no-deps -w /tmp/wheels /src; \
    python3 -m venv --without-pip /opt/venv; \
    /opt/tools/bin/pip --python /opt/venv/bin/python install -q --only-binary=:all: /tmp/wheels/*.whl; \
    suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    for module in rados rbd; do \
        ln -s "/usr/lib/python3/dist-packages/$module$suffix" "$site/"; \
    done; \
    /opt/venv/bin/python -m compileall -q "$site"; \
    rm -rf /tmp/ca-bundle.pem /tmp/wheels /opt/venv/bin/activate* /opt/venv/bin/Activate.ps1

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The Ceph client libraries and their bindings, for Debian's /usr/bin/python3 that the venv uses.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-rados python3-rbd \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
        /var/lib/dpkg/*-old /var/log/apt /var/log/dpkg.log /var/log/alternatives.log
COPY --from=build /opt/venv /opt/venv
# A read-only root filesystem is the norm for this image: nothing may need to write bytecode.
ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd entry.
USER 65532:65532
EXPOSE 8080
# The Deployment passes only `args` (run --leader-elect ...).
ENTRYPOINT ["/opt/venv/bin/rbd-mirror-reconciler"]
CMD ["--help"]
LABEL org.opencontainers.image.title="rbd-mirror-reconciler" \
      org.opencontainers.image.description="Regenerates ceph-csi RBD journals after an rbd-mirror failover" \
      org.opencontainers.image.licenses="Apache-2.0"
