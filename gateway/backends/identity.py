"""The ``identity:`` section of the config file: which policy a caller from the identity provider gets.

Pure: no Flask, no I/O. Parsed by :func:`gateway.backends.config.load_config` with the rest
of the file (one-line errors naming the file and the key path, checked by the gunicorn
master at start and on reload); used by :mod:`gateway.auth.oidc` on every such caller.

.. code-block:: yaml

    identity:
      callers:                      # OIDC_CALLER_CLAIM value -> a managed key, by name (or id)
        alice@example.com: research-team
      groups:                       # OIDC_GROUPS_CLAIM value -> a template of a key's limits
        ml-engineers:
          allowed_models: ["gpt-4o*"]
          rate_limit_ai: 60 per minute
          budget_usd: 50
      default:                      # optional: every other caller of the provider
        rate_limit_ai: 10 per minute

Resolution (:meth:`IdentityMap.resolve`): the caller's own entry in ``callers`` first, then
the first group in the file's order that the token's group claim lists, then ``default``;
with none of them the caller is refused (403). A template takes the fields a managed key
has for its limits (:data:`TEMPLATE_FIELDS`), checked by the same rules
(:func:`gateway.store.key_fields.parse_changes`); unset fields are the gateway's defaults.
A rolling budget is refused in a template: its windows start at a key's creation, and a
group has none.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.backends import config_checks as check
from gateway.backends.config_checks import Invalid
from gateway.store.key_fields import BUDGET_FIELDS, LIMIT_FIELDS, TOKEN_FIELDS, FieldError, parse_changes

TEMPLATE_FIELDS = ("allowed_models", *LIMIT_FIELDS, *TOKEN_FIELDS, *BUDGET_FIELDS)
SECTION_KEYS = ("callers", "groups", "default")
VALUE_MAX = 1024  # a claim value or a key name in the file


@dataclass(frozen=True)
class Template:
    """A group's policy: managed-key limit fields, checked and normalised; unset ones absent."""

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IdentityMap:
    """Claim values to policies (see the module). Empty: every caller of the provider is refused."""

    callers: Mapping[str, str] = field(default_factory=dict)  # caller claim value -> managed key name or id
    groups: tuple[Template, ...] = ()  # file order: the first one listed in the token wins
    default: Template | None = None

    @property
    def empty(self) -> bool:
        return not self.callers and not self.groups and self.default is None

    def resolve(self, caller: str, groups: Collection[str]) -> str | Template | None:
        """A managed key's name (or id), a group's template, or ``None`` (no policy: refused)."""
        key = self.callers.get(caller)
        if key is not None:
            return key
        if groups:
            for template in self.groups:
                if template.name in groups:
                    return template
        return self.default


def _string_key(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise Invalid(path, "must be a string (quote it)")
    text = check.text(value, path)
    if len(text) > VALUE_MAX:
        raise Invalid(path, f"longer than {VALUE_MAX} characters")
    return text


def _template(name: str, value: Any, path: str) -> Template:
    spec = check.mapping(value, path, TEMPLATE_FIELDS)
    try:
        fields = parse_changes(spec, creating=False, now=datetime.now(UTC))
    except FieldError as error:
        raise Invalid(check.at(path, error.param), str(error)) from None
    if fields.get("budget_reset") == "rolling":
        raise Invalid(f"{path}.budget_reset", "rolling windows start at a key's creation; a group has none: use calendar")
    return Template(name, {name: value for name, value in fields.items() if value is not None})


def parse_identity(value: Any, path: str = "identity") -> IdentityMap:
    """The ``identity:`` section. :raises Invalid: the first fault, with its key path."""
    section = check.mapping(value, path, SECTION_KEYS)
    callers: dict[str, str] = {}
    given = section.get("callers") or {}
    if not isinstance(given, dict):
        raise Invalid(f"{path}.callers", "must be a mapping of caller claim values to managed key names")
    for claim, key in given.items():
        where = check.at(f"{path}.callers", claim)
        claim_value = _string_key(claim, where)
        if claim_value in callers:
            raise Invalid(where, "the same caller as another entry (compared without surrounding spaces)")
        callers[claim_value] = _string_key(key, where)
    groups_given = section.get("groups") or {}
    if not isinstance(groups_given, dict):
        raise Invalid(f"{path}.groups", "must be a mapping of group claim values to templates of limits")
    groups: list[Template] = []
    for group, spec in groups_given.items():
        where = check.at(f"{path}.groups", group)
        template = _template(_string_key(group, where), spec, where)
        if any(known.name == template.name for known in groups):
            raise Invalid(where, "the same group as another entry (compared without surrounding spaces)")
        groups.append(template)
    default = _template("default", section["default"], f"{path}.default") if "default" in section else None
    return IdentityMap(callers, tuple(groups), default)
