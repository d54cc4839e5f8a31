"""The header block of an upstream answer, parsed without the ``email`` package.

Pure code: lines in, ``(name, value)`` pairs out; no sockets, no Flask.

``http.client`` hands every answer's header block to ``email.parser`` (a general
MIME parser) and then queries the result through ``email.message``: together a
visible share of a relayed request's CPU (bench/results/profile.md). An HTTP/1.1 field line is simpler (RFC 9112,
section 5): ``name ":" OWS value OWS``, where the name has no whitespace. This
module parses exactly that, and :mod:`gateway.upstream.connection` gives the pool's
connections a response class that uses it (:data:`MAX_LINE` and :data:`MAX_FIELDS`
are ``http.client``'s own limits).

- Whitespace around a value is not part of it, and is dropped.
- Obsolete line folding (a line starting with a space or tab) continues the previous
  field's value, joined with one space, as RFC 9112 asks of a recipient that accepts it.
- A line that is not a field (no colon, or whitespace in or around the name) is ignored:
  ``email`` would keep it as a defect and stop reading fields there.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_LINE = 65536
MAX_FIELDS = 100
_WHITESPACE = " \t"
_FOLD = (" ", "\t")
_NAME_BREAKERS = frozenset(_WHITESPACE)


def parse_fields(lines: Iterable[bytes]) -> list[tuple[str, str]]:
    """The fields of a header block given as raw lines (ends of line included or not)."""
    fields: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if not line:
            continue
        if line.startswith(_FOLD):
            if fields:
                name, value = fields[-1]
                more = line.strip(_WHITESPACE)
                fields[-1] = (name, f"{value} {more}" if value else more)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or not _NAME_BREAKERS.isdisjoint(name):
            continue
        fields.append((name, value.strip(_WHITESPACE)))
    return fields
