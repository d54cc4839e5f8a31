"""The table of AI operations. Adding an AI function is one entry here.

Each operation is served at ``/api/ai/<name>`` and at its OpenAI-compatible
``/v1<upstream_path>``; its route, its ``GET /`` documentation and its quota
follow from the entry. A listing operation with an ``item_summary`` also answers
``<path>/<id>``: one entry of the upstream's list, as OpenAI's retrieve calls do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Operation:
    """One AI function the gateway relays: where it is served, how it is called, and whether it streams."""

    name: str  # served at /api/ai/<name>
    method: str  # "POST" (JSON body) or "GET" (no body)
    upstream_path: str  # joined to the upstream's /v1 base; also served at /v1<upstream_path>
    streams: bool  # accepts "stream": true and relays server-sent events
    summary: str
    # Also served at <each path>/<item_id> (one entry of the list answer, by its id) when set.
    item_summary: str | None = None
    # The body field that limits the tokens it generates, which the gateway sets when a call
    # names no limit and its key's token counters or cap call for one (None: no text generated).
    completion_limit: str | None = None

    @property
    def gateway_paths(self) -> tuple[str, str]:
        return (f"/api/ai/{self.name}", f"/v1{self.upstream_path}")

    @property
    def item_paths(self) -> tuple[str, ...]:
        """The paths of one listed item (``/v1/models/<item_id>``), if the operation has them."""
        if self.item_summary is None:
            return ()
        return tuple(f"{path}/<path:item_id>" for path in self.gateway_paths)

    @property
    def has_body(self) -> bool:
        return self.method == "POST"


OPERATIONS: tuple[Operation, ...] = (
    Operation("completion", "POST", "/completions", True, "Text completion (OpenAI /v1/completions)", completion_limit="max_tokens"),
    # max_tokens, not max_completion_tokens: every OpenAI-compatible server honours it, and some
    # (Ollama) would ignore the newer name, letting the answer pass the reservation (README: Quotas).
    Operation(
        "chat", "POST", "/chat/completions", True, "Chat completion (OpenAI /v1/chat/completions)", completion_limit="max_tokens"
    ),
    Operation("embeddings", "POST", "/embeddings", False, "Embeddings (OpenAI /v1/embeddings)"),
    Operation("images", "POST", "/images/generations", False, "Image generation (OpenAI /v1/images/generations)"),
    Operation(
        "models",
        "GET",
        "/models",
        False,
        "List the upstream's models (OpenAI /v1/models)",
        item_summary="One model by id, from the upstream's list (OpenAI /v1/models/{model})",
    ),
)

BY_NAME: dict[str, Operation] = {op.name: op for op in OPERATIONS}
