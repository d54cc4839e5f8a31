"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from gateway import create_app
from gateway.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    # One line naming the variable, as gunicorn.conf.py does, also for `flask --app wsgi ...`
    # (Flask's CLI would print the whole traceback).
    raise SystemExit(f"configuration error: {error}") from None
