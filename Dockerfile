# Gate service image: the `gate` package on python:3.11-slim, talking to an external Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs is copied, so a local .venv or ./var never enters the image.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gate ./gate
COPY lua ./lua
COPY loadtest ./loadtest
RUN pip install . && rm -rf /src

# Run unprivileged; /app is writable for anything Gate keeps in its working directory.
RUN useradd --system --uid 10001 --home-dir /app --create-home gate
WORKDIR /app
USER gate

# The image has no redis-server on purpose: set GATE_REDIS_URL (docker-compose.yml does).
ENV GATE_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

CMD ["gate", "serve", "--host", "0.0.0.0"]
