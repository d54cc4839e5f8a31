"""``POST /auth/token``: trade an API key for a short-lived JWT."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gateway import extensions
from gateway.auth import tokens
from gateway.body import json_object_body
from gateway.errors import BadRequest, Unauthorized

blueprint = Blueprint("auth", __name__)


@blueprint.post("/auth/token")
def issue_token() -> Response:
    """Issue a JWT for an API key sent as ``{"apiKey": "<key>"}``.

    :raises 415: the body is not declared as JSON (``Content-Type: application/json``),
        the rule of every endpoint that takes a JSON body.
    :raises 400: the body is not a JSON object with a string ``apiKey``.
    :raises 401: the key is wrong (failed attempts are limited per client address).
    """
    _, body = json_object_body()
    api_key = body.get("apiKey")
    if not isinstance(api_key, str) or not api_key:
        raise BadRequest('Send {"apiKey": "<your key>"}.', param="apiKey", error_code="missing_api_key")
    key_id = extensions.keys().identify(api_key)
    if key_id is None:
        raise Unauthorized()
    config: tokens.TokenConfig = extensions.tokens()
    response = jsonify(
        token=tokens.mint(config, key_id),
        token_type="Bearer",
        expires_in=config.expires_in,
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response
