# syntax=docker/dockerfile:1
# The one image of evalstream: every container of docker-compose.yml runs it with another command
# (`evalstream migrate`, `evalstream serve ingest|evaluator|projections`). See docs/production.md.

# Build stage: install the project (a hatchling wheel of `schemas` and `services`) into a venv
# that the runtime stage copies whole, so no build tooling ends up in the final image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/evalstream
WORKDIR /src
# pyproject.toml names README.md as the package's readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
RUN /opt/evalstream/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/evalstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed, unprivileged uid, named numerically so that runtimes enforcing non-root (Kubernetes'
# runAsNonRoot) can verify it.
RUN groupadd --gid 10001 evalstream \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/evalstream \
        --shell /usr/sbin/nologin evalstream
COPY --from=build /opt/evalstream /opt/evalstream
USER 10001:10001
WORKDIR /home/evalstream
# The services listen on these when EVALSTREAM_HOST=0.0.0.0 (ingest, query API).
EXPOSE 8000 8001
CMD ["evalstream", "--help"]
