#!/usr/bin/env bash
# Install or update the AI Proxy Gateway as a systemd service on Debian (12 or later).
#
#   sudo deploy/install.sh            # from a clone of the repository
#
# Idempotent: run it again after `git pull` to update the code and dependencies. It
#   1. installs python3 (>= 3.11) and python3-venv from Debian when missing;
#   2. creates the system user and group ai-proxy (no login, no home of its own);
#   3. copies the code to /opt/ai-proxy (owned by root: the service cannot change it);
#   4. creates /opt/ai-proxy/instance owned by ai-proxy (the unit's ReadWritePaths=;
#      the default SQLite database lives there);
#   5. builds the production virtualenv /opt/ai-proxy/.venv from requirements.txt;
#   6. writes /etc/ai-proxy/ai-proxy.env (mode 0640, root:ai-proxy) from .env.example
#      with a fresh MASTER_API_KEY and JWT_SECRET, once: an existing file is kept;
#   7. installs deploy/ai-proxy.service, enables it and (re)starts it.
# Then set AI_API_URL (and AI_API_KEY) in /etc/ai-proxy/ai-proxy.env and run
# `systemctl restart ai-proxy`.
#
# Paths and names can be changed through the environment: PREFIX, CONF_DIR, UNIT_DIR,
# SERVICE_USER, PYTHON; START=no installs without enabling or starting the service.
set -euo pipefail

PREFIX="${PREFIX:-/opt/ai-proxy}"
CONF_DIR="${CONF_DIR:-/etc/ai-proxy}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
SERVICE_USER="${SERVICE_USER:-ai-proxy}"
PYTHON="${PYTHON:-python3}"
START="${START:-yes}"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -f "$SOURCE/wsgi.py" ] && [ -f "$SOURCE/requirements.txt" ] || die "run from a clone of the repository"

# 1. Python >= 3.11 with venv (Debian 12 ships 3.11).
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "$PYTHON with venv is missing and this is not Debian: install it first"
  say "installing python3 and python3-venv (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is older than 3.11: install a newer Python and run again with PYTHON=/path/to/python3.11"

# 2. The service's user and group.
if ! getent group "$SERVICE_USER" >/dev/null; then
  say "creating group $SERVICE_USER"
  groupadd --system "$SERVICE_USER"
fi
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  say "creating user $SERVICE_USER"
  useradd --system --gid "$SERVICE_USER" --home-dir "$PREFIX" --no-create-home \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# 3. The code, owned by root.
install -d -m 0755 -o root -g root "$PREFIX"
if [ "$SOURCE" != "$PREFIX" ]; then
  say "copying the code to $PREFIX"
  rm -rf "$PREFIX/gateway"
  cp -R "$SOURCE/gateway" "$PREFIX/gateway"
  find "$PREFIX/gateway" -name '__pycache__' -type d -prune -exec rm -rf {} +
  cp "$SOURCE/wsgi.py" "$SOURCE/gunicorn.conf.py" "$SOURCE/requirements.txt" "$PREFIX/"
  chown -R root:root "$PREFIX/gateway" "$PREFIX/wsgi.py" "$PREFIX/gunicorn.conf.py" "$PREFIX/requirements.txt"
  chmod -R u=rwX,go=rX "$PREFIX/gateway" "$PREFIX/wsgi.py" "$PREFIX/gunicorn.conf.py" "$PREFIX/requirements.txt"
fi

# 4. The one folder the service writes (ReadWritePaths= in the unit requires it to exist).
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$PREFIX/instance"

# 5. The production virtualenv: requirements.txt only (requirements-dev.txt is for tests).
if [ ! -x "$PREFIX/.venv/bin/python" ]; then
  say "creating $PREFIX/.venv"
  "$PYTHON" -m venv "$PREFIX/.venv"
fi
say "installing requirements.txt into $PREFIX/.venv"
"$PREFIX/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PREFIX/requirements.txt"

# 6. Settings, written once: an existing file is the operator's.
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
ENV_FILE="$CONF_DIR/ai-proxy.env"
if [ ! -f "$ENV_FILE" ]; then
  say "writing $ENV_FILE with new MASTER_API_KEY and JWT_SECRET"
  master="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
  jwt="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
  umask 027
  sed -e "s/^# MASTER_API_KEY=\$/MASTER_API_KEY=$master/" \
      -e "s/^# JWT_SECRET=\$/JWT_SECRET=$jwt/" \
      "$SOURCE/.env.example" > "$ENV_FILE.tmp"
  if ! grep -q "^MASTER_API_KEY=$master\$" "$ENV_FILE.tmp" || ! grep -q "^JWT_SECRET=$jwt\$" "$ENV_FILE.tmp"; then
    rm -f "$ENV_FILE.tmp"
    die ".env.example has no '# MASTER_API_KEY=' or '# JWT_SECRET=' line to fill in"
  fi
  chown "root:$SERVICE_USER" "$ENV_FILE.tmp"
  chmod 0640 "$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
else
  say "keeping $ENV_FILE"
fi

# 7. The unit.
install -d -m 0755 "$UNIT_DIR"
sed -e "s#/opt/ai-proxy#$PREFIX#g" -e "s#/etc/ai-proxy/#$CONF_DIR/#g" \
    -e "s#^User=ai-proxy\$#User=$SERVICE_USER#" -e "s#^Group=ai-proxy\$#Group=$SERVICE_USER#" \
    "$SOURCE/deploy/ai-proxy.service" > "$UNIT_DIR/ai-proxy.service.tmp"
chmod 0644 "$UNIT_DIR/ai-proxy.service.tmp"
mv "$UNIT_DIR/ai-proxy.service.tmp" "$UNIT_DIR/ai-proxy.service"
if [ "$START" = yes ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable ai-proxy >/dev/null 2>&1
  say "(re)starting ai-proxy"
  systemctl restart ai-proxy
  say "done: systemctl status ai-proxy; journalctl -u ai-proxy"
else
  say "installed without starting: systemctl daemon-reload && systemctl enable --now ai-proxy"
fi
say "set AI_API_URL (and AI_API_KEY) in $ENV_FILE, then: systemctl restart ai-proxy"
say "the master key: grep ^MASTER_API_KEY= $ENV_FILE"
