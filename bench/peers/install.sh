#!/usr/bin/env bash
# Install the peer gateways for `make bench-peers` into the git-ignored bench/.peers/.
# LiteLLM's proxy: PyPI litellm[proxy] in its own venv. Portkey's gateway: npm
# @portkey-ai/gateway, with @hono/node-server pinned to 1.13.8 through npm overrides
# (as installed unpinned on Node 20 it answered every streamed request with 500).
# Their code stays under bench/.peers/ and is never committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=bench/.peers
PYTHON=${PYTHON:-python3.11}
mkdir -p "$PEERS"

if [ ! -x "$PEERS/litellm/bin/litellm" ]; then
  echo "bench-peers: installing litellm[proxy] into $PEERS/litellm"
  rm -rf "$PEERS/litellm"
  "$PYTHON" -m venv "$PEERS/litellm"
  "$PEERS/litellm/bin/python" -m pip install --quiet --disable-pip-version-check "litellm[proxy]"
fi

if [ ! -f "$PEERS/portkey/node_modules/@portkey-ai/gateway/package.json" ]; then
  echo "bench-peers: installing @portkey-ai/gateway into $PEERS/portkey"
  mkdir -p "$PEERS/portkey"
  cat > "$PEERS/portkey/package.json" <<'JSON'
{
  "name": "bench-peer-portkey",
  "private": true,
  "dependencies": { "@portkey-ai/gateway": "*" },
  "overrides": { "@hono/node-server": "1.13.8" }
}
JSON
  (cd "$PEERS/portkey" && npm install --no-audit --no-fund --loglevel=error)
fi

"$PEERS/litellm/bin/python" -c "import importlib.metadata as m; print('litellm', m.version('litellm'))"
node -e "console.log('@portkey-ai/gateway', require('./$PEERS/portkey/node_modules/@portkey-ai/gateway/package.json').version, '@hono/node-server', require('./$PEERS/portkey/node_modules/@hono/node-server/package.json').version)"
