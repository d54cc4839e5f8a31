"""Which endpoints need credentials and which request quotas they pay: data, not code.

The auth hook (:mod:`gateway.auth`) and the request quotas (:mod:`gateway.quotas.windows`)
read these tables; ``GET /`` shows them. An endpoint is named as Flask names it
(``blueprint.view``). Adding a public endpoint is one pair in :data:`PUBLIC_ENDPOINTS`;
an endpoint named nowhere needs credentials and pays the general quota.
"""

from __future__ import annotations

# (endpoint, method) pairs served without credentials. HEAD follows GET.
PUBLIC_ENDPOINTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("meta.index", "GET"),
        ("meta.index", "HEAD"),
        ("meta.openapi", "GET"),
        ("meta.openapi", "HEAD"),
        ("meta.health", "GET"),
        ("meta.health", "HEAD"),
        ("meta.ready", "GET"),
        ("meta.ready", "HEAD"),
        ("auth.issue_token", "POST"),
        # The console's sign-in page and its static files (CSS, JS): before any session exists.
        ("console.sign_in", "GET"),
        ("console.sign_in", "HEAD"),
        ("console.sign_in", "POST"),
        ("console.static", "GET"),
        ("console.static", "HEAD"),
    }
)
# The blueprint of the operator's console (gateway.console): its endpoints, and only they,
# also take the console's session cookie as a credential (gateway.auth.session). They are
# pages for a browser, not API: GET / and /openapi.json leave them out.
SESSION_BLUEPRINT = "console"
# (endpoint, method) pairs where Authorization: Bearer <METRICS_TOKEN> identifies the scraper.
METRICS_TOKEN_ENDPOINTS: frozenset[tuple[str, str]] = frozenset({("metrics.scrape", "GET"), ("metrics.scrape", "HEAD")})

# Endpoints that pay no request quota at all: probes and scrapes that infrastructure
# calls often and that never reach the upstream. Who may call them is still auth's decision.
QUOTA_EXEMPT_ENDPOINTS: frozenset[str] = frozenset({"meta.health", "meta.ready", "metrics.scrape", "console.static"})
# The console's sign-in page pays the general quota per client address, as any request without
# credentials does; its other pages are for a signed-in operator browsing (not API traffic) and
# pay none, so a busy operator never meets 429 from the master key's scripts' quota.
CONSOLE_PAYING_ENDPOINTS: frozenset[str] = frozenset({"console.sign_in"})


def is_quota_exempt(endpoint: str) -> bool:
    """Whether ``endpoint`` pays no request quota at all (see the tables above)."""
    if endpoint in QUOTA_EXEMPT_ENDPOINTS:
        return True
    return endpoint.startswith(f"{SESSION_BLUEPRINT}.") and endpoint not in CONSOLE_PAYING_ENDPOINTS


# The blueprint of the AI operations: the general and the AI quota, counted by the relay
# view once it knows whether the request goes upstream (not by the quota hook).
AI_BLUEPRINT = "ai"
# The blueprint whose endpoints also pay the failed-attempt limit per client address.
AUTH_FAILURE_BLUEPRINT = "auth"
