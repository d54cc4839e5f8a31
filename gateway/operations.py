"""The table of AI operations. Adding an AI function is one entry here.

Each operation is served at ``/api/ai/<name>`` and at its OpenAI-compatible
``/v1<upstream_path>``; its route, its ``GET /`` documentation and its quota
follow from the entry. An operation with an ``item_summary`` also answers
``<path>/<item_id>`` (:attr:`Operation.item_paths`), in one of two ways:

- ``listed``: one entry of the operation's own list answer, looked up by id (``GET /v1/models/<id>``);
- ``relayed``: sent to the backend's ``<upstream_path>/<item_id>`` with each of ``item_methods``,
  no body and no model (``GET`` and ``DELETE /v1/responses/<id>``). The id is one path
  segment, checked and percent-encoded (:func:`item_segment`); these calls use no tokens.

:func:`declared_routes` is every (rule, method) the table declares: the AI blueprint
serves exactly these, and a test holds any other route to not reaching a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

ITEM_ID_MAX = 256  # characters of a relayed item's id


@dataclass(frozen=True)
class Operation:
    """One AI function the gateway relays: where it is served, how it is called, and whether it streams."""

    name: str  # served at /api/ai/<name>
    method: str  # "POST" (JSON body) or "GET" (no body)
    upstream_path: str  # joined to the upstream's /v1 base; also served at /v1<upstream_path>
    streams: bool  # accepts "stream": true and relays server-sent events
    summary: str
    # Also served at <each path>/<item_id> when set (see the module): how, and with which methods.
    item_summary: str | None = None
    # The body field that limits the tokens it generates, which the gateway sets when a call
    # names no limit and its key's token counters or cap call for one (None: no text generated).
    completion_limit: str | None = None
    item_kind: Literal["listed", "relayed"] = "listed"
    item_methods: tuple[str, ...] = ("GET",)
    # How a stream reports usage: "ask" (only with stream_options.include_usage, which the
    # gateway adds: OpenAI's completions and chat) or "always" (its last event: Responses).
    stream_usage: Literal["ask", "always"] = "ask"

    @property
    def gateway_paths(self) -> tuple[str, str]:
        return (f"/api/ai/{self.name}", f"/v1{self.upstream_path}")

    @property
    def item_paths(self) -> tuple[str, ...]:
        """The paths of one item (``/v1/models/<item_id>``), if the operation has them. The ``path``
        converter lets an id with a ``/`` reach the view: a model's id may have one; a relayed
        item's is refused there (:func:`item_segment`)."""
        if self.item_summary is None:
            return ()
        return tuple(f"{path}/<path:item_id>" for path in self.gateway_paths)

    @property
    def has_body(self) -> bool:
        return self.method == "POST"

    @property
    def lists_items(self) -> bool:
        """``<path>/<item_id>`` is looked up in this operation's list answer (``/v1/models/<id>``)."""
        return self.item_summary is not None and self.item_kind == "listed"

    @property
    def relays_items(self) -> bool:
        """``<path>/<item_id>`` is sent to the backend (not looked up in a list answer)."""
        return self.item_summary is not None and self.item_kind == "relayed"

    def routes(self) -> tuple[tuple[str, str], ...]:
        """Every (Flask rule, method) this operation is served at."""
        main = tuple((path, self.method) for path in self.gateway_paths)
        return main + tuple((path, method) for path in self.item_paths for method in self.item_methods)


def item_segment(item_id: str) -> str | None:
    """A relayed item's id as one percent-encoded path segment, or ``None`` when it is not one id:
    empty, longer than :data:`ITEM_ID_MAX`, ``.`` or ``..``, or holding a ``/``, a control
    character or a lone surrogate. Nothing the client sends can reach another upstream path."""
    if not 0 < len(item_id) <= ITEM_ID_MAX or item_id in (".", "..") or "/" in item_id:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF for char in item_id):
        return None
    return quote(item_id, safe="")


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
    Operation(
        "responses",
        "POST",
        "/responses",
        True,
        "Create a model response (OpenAI Responses API, /v1/responses)",
        item_summary="Retrieve (GET) or delete (DELETE) a stored response by id (OpenAI /v1/responses/{response_id})",
        item_kind="relayed",
        item_methods=("GET", "DELETE"),
        stream_usage="always",
        completion_limit="max_output_tokens",
    ),
)

BY_NAME: dict[str, Operation] = {op.name: op for op in OPERATIONS}


def declared_routes() -> set[tuple[str, str]]:
    """Every (Flask rule, method) of every AI operation: what the AI blueprint serves."""
    return {route for op in OPERATIONS for route in op.routes()}
