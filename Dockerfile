# syntax=docker/dockerfile:1
# One image for every process: the subcommand picks the role (api, worker, scheduler, db migrate, ...).
#   docker build -t birthday-scheduler .
#   docker run --rm -e API_TOKENS=... -e DATABASE_URL=... -e RABBITMQ_URL=... birthday-scheduler api
# No secret is baked in: every credential arrives through the environment at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheel and install it with its dependencies into a self-contained venv ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
RUN python -m venv /opt/venv
# Only what the wheel needs, so editing tests or docs does not bust the layer cache.
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/*.whl

# --- runtime: slim Python, the venv, an unprivileged user, nothing else ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    METRICS_PORT=9100
# A fixed uid/gid so Kubernetes runAsUser and volume ownership can name it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/var \
    && chown -R 10001:10001 /app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# 8000: the HTTP API (/health, /ready, /alive, /metrics). 9100: worker/scheduler operations port.
EXPOSE 8000 9100
# slim has no curl: probe /alive with the standard library. The API answers on PORT, workers and
# schedulers on METRICS_PORT, so the one image-wide check is healthy when either port says 200.
# Proxies are bypassed: an HTTP(S)_PROXY set for the app must not route the local probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request\nopener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\nports = {os.environ.get('PORT', '8000'), os.environ.get('METRICS_PORT', '9100')}\nfor port in sorted(ports):\n    try:\n        with opener.open(f'http://127.0.0.1:{port}/alive', timeout=3) as response:\n            if response.status == 200:\n                sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)\n"]
# Every process drains on SIGTERM and exits 0 within SHUTDOWN_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["birthday-scheduler"]
CMD ["api"]
