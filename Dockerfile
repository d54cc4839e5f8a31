# AI Proxy Gateway: gunicorn + gevent, non-root, health-checked.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AI_PROXY_HOST=0.0.0.0 \
    AI_PROXY_PORT=8767 \
    NODE_ENV=production

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin gateway

COPY gateway/ gateway/
COPY wsgi.py gunicorn.conf.py ./
RUN mkdir -p /app/instance && chown gateway /app/instance

USER gateway
EXPOSE 8767

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AI_PROXY_PORT', '8767'), timeout=2)" || exit 1

# Bring the database schema up to date, then serve. The gateway itself refuses to start on
# a schema that is behind; with several replicas on one PostgreSQL, run
# `flask --app wsgi db upgrade` once as a release step and override CMD with gunicorn alone.
# The default database is the SQLite file /app/instance/gateway.db: mount a volume there.
CMD ["sh", "-c", "flask --app wsgi db upgrade && exec gunicorn -c gunicorn.conf.py wsgi:app"]
