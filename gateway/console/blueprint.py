"""The console's blueprint and what every page shares: rendering, the report queries,
``Cache-Control: no-store``, the CSRF check and the errors a browser sees.

Errors: a browser (a request that prefers ``text/html`` to JSON) gets an HTML page, or,
without a valid session, a redirect to the sign-in page; any other client gets the
gateway's JSON envelope, exactly as from the API (:func:`gateway.errors.render_http_exception`).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from wtforms import ValidationError

from gateway import extensions
from gateway.auth import current_caller
from gateway.auth.keys import MASTER_KEY_ID
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized, render_http_exception
from gateway.store.console_report import ConsoleReport

log = logging.getLogger(__name__)

blueprint = Blueprint("console", __name__, static_folder="static", template_folder="templates")
blueprint.add_app_template_global(generate_csrf, "csrf_token")
CSRF_FIELD = "csrf_token"


def wants_html() -> bool:
    """A browser: it prefers ``text/html`` to JSON (a navigation or a form post)."""
    return request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html"


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"console/{template}", caller=current_caller(), **context), status


def report() -> ConsoleReport:
    return ConsoleReport(extensions.store().engine)


@blueprint.before_request
def _checks() -> None:
    """Every state-changing request carries the CSRF token (Flask-WTF, in the session); every
    page but the sign-in page is the master key's."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        try:
            validate_csrf(request.form.get(CSRF_FIELD))  # Flask-WTF: the session's token, signed and timed
        except ValidationError as error:
            raise CSRFError(str(error)) from None
    if request.endpoint in ("console.sign_in", "console.static"):
        return
    caller = current_caller()
    if caller is None or caller.id != MASTER_KEY_ID:
        raise Forbidden("Only the master key (or a token minted from it) can use the console.", error_code="admin_only")


@blueprint.after_request
def _no_store(response: Response) -> Response:
    """Console pages show usage, keys and, once, a new secret: never kept by a browser or proxy cache."""
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Any:
    if not wants_html():
        return render_http_exception(error)
    if isinstance(error, Unauthorized):
        return redirect(url_for("console.sign_in", next=request.full_path if request.method == "GET" else None), code=303)
    if isinstance(error, CSRFError):
        message = "This form has expired or did not come from this console. Go back, reload the page and try again."
    else:
        message = error.description or error.name
    response = render_http_exception(error)  # keeps Retry-After, Allow, ...
    body, status = page("error.html", error.code or 500, title=error.name, message=message)
    response.set_data(body)
    response.status_code = status
    response.mimetype = "text/html"
    return response


@blueprint.errorhandler(SQLAlchemyError)
def _database_unavailable(error: SQLAlchemyError) -> Any:
    log.warning("console: database unavailable (%s)", type(error).__name__)
    return _http_error(ServiceUnavailable("The database is unavailable; retry shortly.", headers={"Retry-After": "5"}))
