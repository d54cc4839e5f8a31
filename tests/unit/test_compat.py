"""The reaches into other libraries' private names (gateway/compat.py) still work.

Each test names the library: when one fails after an upgrade, the function in
gateway/compat.py must be rewritten against the new version.
"""

from __future__ import annotations

from importlib.metadata import version

from flask import Flask
from flask_limiter import Limiter

from gateway import compat


def test_flask_limiter_fallback_switch_still_exists_and_still_switches() -> None:
    app = Flask(__name__)
    limiter = Limiter(key_func=lambda: "k", storage_uri="memory://", in_memory_fallback_enabled=True)
    limiter.init_app(app)
    with app.app_context():
        store = limiter.limiter
        assert hasattr(limiter, compat.LIMITER_STORAGE_DEAD), (
            f"flask-limiter {version('flask-limiter')} has no {compat.LIMITER_STORAGE_DEAD!r}: "
            "rewrite gateway/compat.py's flask-limiter section"
        )
        assert compat.limiter_storage_dead(limiter) is False
        compat.set_limiter_storage_dead(limiter, True)
        assert compat.limiter_storage_dead(limiter) is True
        assert limiter.limiter is not store, (
            f"flask-limiter {version('flask-limiter')}: the flag no longer switches to the fallback strategy"
        )
        compat.set_limiter_storage_dead(limiter, False)
        assert limiter.limiter is store, f"flask-limiter {version('flask-limiter')}: the flag no longer switches back"
