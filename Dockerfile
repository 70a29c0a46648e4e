# The viadk8s worker image: one pod = one `viadk8s worker --spec FILE` run (see docs/cluster.md).
# Build: make image IMAGE=registry.example.com/viadk8s:TAG (docker, or podman where no Docker engine runs).
# BASE_IMAGE must hold the torch and torchvision that viadk8s/requirements.lock pins (the build checks
# and fails otherwise); `make image-local` builds on a local Debian base instead (no registry needed).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG UID=10001
# Set only by builds that need this machine's pip set-up (scripts/pip-build-opts.py).
ARG PIP_CONFIG_FILE

# Same environment as viadk8s.worker.env.worker_env(): offline hub, glibc heap fix for PatchCore.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    MLFLOW_DISABLE_TELEMETRY=true \
    VIADK8S_WEIGHTS_DIR=/var/cache/viadk8s/weights \
    VIADK8S_CACHE=/var/cache/viadk8s/datasets \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/viadk8s
# The lock first (runtime deps + psycopg2 to serve MLflow on PostgreSQL): rebuilt only when it changes.
COPY scripts/install-lock.sh viadk8s/requirements.lock ./
RUN sh install-lock.sh requirements.lock && rm install-lock.sh requirements.lock
COPY pyproject.toml README.md ./
COPY viadk8s ./viadk8s
RUN python -m pip install --no-deps --no-build-isolation . \
    && rm -rf build viadk8s.egg-info \
    && groupadd --gid "${UID}" viadk8s \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /tmp --shell /usr/sbin/nologin viadk8s \
    && mkdir -p /var/cache/viadk8s/weights /var/cache/viadk8s/datasets \
    && chown -R "${UID}:${UID}" /var/cache/viadk8s

# Pods mount volumes over both cache paths (cluster.cache and cluster.weights in viadk8s.yaml).
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["viadk8s"]
CMD ["--help"]
