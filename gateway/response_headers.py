"""Setting several response headers in one pass.

Werkzeug's ``headers[name] = value`` looks through every header already there for
``name`` (to replace it), so the many headers the gateway's hooks set on
each response cost a scan each. :func:`put` looks once, then appends the names that
are not there yet and replaces only those that are: the same result.
"""

from __future__ import annotations

from collections.abc import Iterable

from werkzeug.datastructures import Headers


def put(headers: Headers, pairs: Iterable[tuple[str, str]]) -> None:
    """Set each ``(name, value)``, replacing a header of that name if there is one."""
    present = {name.lower() for name in headers.keys()}
    for name, value in pairs:
        folded = name.lower()
        if folded in present:
            headers[name] = value
        else:
            headers.add(name, value)
            present.add(folded)  # a later pair of the same name replaces this one
