# The openrouter-spend proxy. Build context is the repository root; see docker-compose.yml.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY config/proxy.docker.yaml /etc/openrouter-spend/proxy.yaml
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data proxy \
    && mkdir -p /data && chown proxy /data

USER proxy
VOLUME /data
EXPOSE 8787

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["openrouter-spend"]
# The config names the metrics token's variable; /metrics needs one off loopback.
CMD ["serve", "--config", "/etc/openrouter-spend/proxy.yaml", "--host", "0.0.0.0", "--db", "/data/openrouter-spend.db"]
