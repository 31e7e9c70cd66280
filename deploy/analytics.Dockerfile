# syntax=docker/dockerfile:1
# The analytics service. Build from the repository root:
#   docker build -f deploy/analytics.Dockerfile -t daca-analytics .
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first, so code changes do not rebuild them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY chat_service ./chat_service
COPY analytics_service ./analytics_service
COPY resilience ./resilience
COPY servicekit ./servicekit
COPY load_tests ./load_tests
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home /app app \
    && mkdir -p /app/data && chown app:app /app/data
WORKDIR /app
COPY --from=build --chown=app:app /app /app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8001
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
# uvicorn handles SIGTERM gracefully: in-flight requests finish.
# Slow clients and connection floods: docs/overload.md (the same flags as load_tests/processes.py).
CMD ["uvicorn", "analytics_service.main:app", "--host", "0.0.0.0", "--port", "8001", "--loop", "uvloop", "--http", "servicekit.connections:GuardedHttpToolsProtocol", "--limit-concurrency", "4096", "--backlog", "4096", "--timeout-keep-alive", "5", "--timeout-graceful-shutdown", "20", "--no-access-log"]
