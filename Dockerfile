# The viadk8s worker image: one pod = one `viadk8s worker --spec FILE` run (see docs/cluster.md).
# Build: make image IMAGE=registry.example.com/viadk8s:TAG   (needs a Docker engine; CI only lints it)
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ARG UID=10001

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
COPY pyproject.toml README.md ./
COPY viadk8s ./viadk8s
# torch and torchvision come from the base image; psycopg2 lets the image serve MLflow on PostgreSQL.
RUN pip install --no-cache-dir . "psycopg2-binary==2.9.10" \
    && groupadd --gid "${UID}" viadk8s \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /tmp --shell /usr/sbin/nologin viadk8s \
    && mkdir -p /var/cache/viadk8s/weights /var/cache/viadk8s/datasets \
    && chown -R "${UID}:${UID}" /var/cache/viadk8s

# Pods mount volumes over both cache paths (cluster.cache and cluster.weights in viadk8s.yaml).
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["viadk8s"]
CMD ["--help"]
