"""The backends file as the gunicorn master accepted it, handed to the workers it forks.

A file that changes under a running gateway must not reach a worker unchecked: the
master checks it at start (an invalid file stops it, in one line) and on every reload
(``SIGHUP``, systemd's ``ExecReload``), before gunicorn forks the new workers, and keeps
what it accepted in the environment variable :data:`ACCEPTED_VARIABLE`, which every
worker forked afterwards inherits and builds its configuration from (:func:`build`):
the file's text, or an empty value for "no file, the single upstream". A file refused
on reload is logged and the previous snapshot stays: new workers keep the previous
configuration and a running gateway never stops over it.

Without gunicorn (``flask`` commands, tests) the variable is unset and the file is read
directly. The variable is internal: not a setting, never read from ``.env``.
"""

from __future__ import annotations

import logging
import os

from gateway.backends.config import ConfigFileError, GatewayConfig, describe, from_environment, load_config, read_config_text
from gateway.config import Settings

log = logging.getLogger("gateway.backends")

ACCEPTED_VARIABLE = "GATEWAY_CONFIG_ACCEPTED"
_state = {"started": False}  # this process (a gunicorn master) took its start-up snapshot


def build(settings: Settings) -> GatewayConfig:
    """This process's configuration: from its master's snapshot when there is one.

    :raises ConfigFileError: no snapshot and the file is invalid.
    """
    text = os.environ.get(ACCEPTED_VARIABLE)
    if text is None:
        return load_config(settings)
    return load_config(settings, text=text) if text else from_environment(settings)


def started() -> bool:
    """Whether this process took its start-up snapshot already: gunicorn re-executes
    ``gunicorn.conf.py`` on every reload, and only :func:`reload` decides then."""
    return _state["started"]


def take(settings: Settings) -> None:
    """At start, in the gunicorn master: check the file and keep it for the workers.

    :raises ConfigFileError: the file is invalid.
    """
    text = ""
    if settings.gateway_config:
        text = read_config_text(settings.gateway_config)
        load_config(settings, text=text)
    os.environ[ACCEPTED_VARIABLE] = text  # replaces any value inherited from elsewhere
    _state["started"] = True


def log_taken(settings: Settings) -> None:
    """The start-up line: which backends file is in use, in counts (never URLs or keys)."""
    if settings.gateway_config:
        log.info("backends configuration from %s: %s", settings.gateway_config, describe(build(settings)))


def reload(settings: Settings) -> bool:
    """On reload, before gunicorn forks the new workers: accept the file as it is now, or
    log why not and keep the previous snapshot. :returns: whether it was accepted."""
    if not settings.gateway_config:
        if os.environ.get(ACCEPTED_VARIABLE):
            log.info("backends configuration reloaded: GATEWAY_CONFIG is empty now, one upstream from AI_API_URL")
        os.environ[ACCEPTED_VARIABLE] = ""
        return True
    try:
        text = read_config_text(settings.gateway_config)
        config = load_config(settings, text=text)
    except ConfigFileError as error:
        log.error("configuration file refused on reload, keeping the previous one: %s", error)
        return False
    os.environ[ACCEPTED_VARIABLE] = text
    log.info("backends configuration reloaded from %s: %s", settings.gateway_config, describe(config))
    return True
