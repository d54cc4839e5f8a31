"""No key, token or prompt text in logs or responses (canary secrets)."""

from __future__ import annotations

import json

from tests.conftest import CANARIES, CANARY_MASTER_KEY, KEY_HEADERS
from tests.fakes.upstream import Behavior

PROMPT = "canary-prompt-text-5b1c"


def test_nothing_secret_is_logged_or_returned(client, upstream, capfd) -> None:
    outputs = []
    token_response = client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY})
    token = token_response.get_json()["token"]
    assert CANARY_MASTER_KEY not in token_response.get_data(as_text=True)
    calls = [
        lambda: client.post("/api/ai/completion", json={"model": "m", "prompt": PROMPT}, headers=KEY_HEADERS),
        lambda: client.post("/api/ai/completion", json={"model": "m", "prompt": PROMPT}, headers={"Authorization": f"Bearer {token}"}),
        lambda: client.post(
            "/api/ai/completion", json={"model": "m", "prompt": PROMPT}, headers={"X-API-Key": CANARY_MASTER_KEY + "x"}
        ),
        lambda: client.post("/auth/token", json={"apiKey": CANARY_MASTER_KEY + "x"}),
        lambda: client.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
            headers=KEY_HEADERS,
        ),
    ]
    for call in calls:
        outputs.append(call())
    for behavior in (
        Behavior(mode="status", status=401),
        Behavior(mode="status", status=500),
        Behavior(mode="drop"),
        Behavior(mode="raw", body=b"<html>", content_type="text/html"),
    ):
        upstream.behavior = behavior
        outputs.append(client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}, headers=KEY_HEADERS))
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    assert '"msg": "request"' in logs  # the request log really was captured
    texts = [logs] + [r.get_data(as_text=True) + json.dumps(dict(r.headers)) for r in outputs]
    for text in texts:
        for secret in (*CANARIES, token, PROMPT):
            assert secret not in text
            assert secret[:12] not in text
