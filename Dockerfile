# Gate service image: the `gate` package on python:3.11-slim, talking to an external Redis.
# Everything is installed from uv.lock: the runtime pins with their hashes, then Gate's wheel.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install uv==0.13.10
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# The runtime only (no test tools, no load-test extras), exactly as the lock pins them.
RUN uv export --frozen --no-emit-project --format requirements-txt -o /requirements.txt
COPY gate ./gate
COPY lua ./lua
COPY loadtest ./loadtest
RUN uv build --wheel --out-dir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /requirements.txt /tmp/requirements.txt
COPY --from=build /dist/ /tmp/dist/
RUN pip install --require-hashes -r /tmp/requirements.txt \
    && pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/requirements.txt /tmp/dist

# Run unprivileged. /app/var is the data directory (GATE_DATA_DIR): the embedded SQLite ledger
# archive lives there when GATE_DATABASE_URL is unset, so it is a volume; mount one (compose
# does) or every recreate of the container loses the archived ledger.
RUN useradd --system --uid 10001 --home-dir /app --create-home gate \
    && mkdir -p /app/var && chown gate /app/var
WORKDIR /app
USER gate
VOLUME ["/app/var"]

# The image has no redis-server on purpose: set GATE_REDIS_URL (docker-compose.yml does).
# `gate loadtest` is not offered here (its extras are left out): it says how to get it.
ENV GATE_PORT=8080 GATE_DATA_DIR=/app/var
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

CMD ["gate", "serve", "--host", "0.0.0.0"]
