# AI Proxy Gateway: gunicorn + gevent, non-root (uid 10001), health-checked.
#
#   docker build -t ai-proxy .
#   docker run -d --name ai-proxy -p 8767:8767 --env-file .env -v ai-proxy-data:/app/instance ai-proxy
#
# Set AI_API_URL: the default (localhost:11434) is this container itself, not the host.
# A host folder mounted at /app/instance must be writable by uid 10001
# (`sudo chown 10001:10001 ./data`); a named volume, as above, already is.
FROM python:3.11-slim

# GATEWAY_GRACEFUL_TIMEOUT: how long `docker stop` lets in-flight requests and streams
# finish. Docker sends SIGKILL 10 s after SIGTERM unless told otherwise, so the image
# drains for 8 s; for longer streams give both, e.g.
# `docker run --stop-timeout 35 -e GATEWAY_GRACEFUL_TIMEOUT=30 ...`.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AI_PROXY_HOST=0.0.0.0 \
    AI_PROXY_PORT=8767 \
    GATEWAY_GRACEFUL_TIMEOUT=8 \
    NODE_ENV=production

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin gateway

COPY gateway/ gateway/
COPY wsgi.py gunicorn.conf.py ./
RUN mkdir -p /app/instance && chown 10001:10001 /app/instance

USER 10001:10001
EXPOSE 8767
# gunicorn's graceful stop (SIGINT and SIGQUIT would cut streams at once).
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AI_PROXY_PORT', '8767'), timeout=2)"]

# Bring the database schema up to date, then serve. The default SQLite file
# (/app/instance/gateway.db: mount a volume there) would upgrade itself at start anyway;
# the explicit step serves a configured DATABASE_URL. With several replicas on one
# PostgreSQL, run `flask --app wsgi db upgrade` once as a release step and override CMD
# with gunicorn alone: ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"].
CMD ["sh", "-c", "flask --app wsgi db upgrade && exec gunicorn -c gunicorn.conf.py wsgi:app"]
