"""The identity provider's settings, the config file's ``identity:`` section, caller ids and
which keys of a JWK Set are used: pure checks, no server."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.jwks import keys_from
from gateway.auth.oidc import caller_id
from gateway.backends.config import ConfigFileError, describe, load_config
from gateway.backends.identity import IdentityMap, Template
from gateway.config import ConfigError, Settings, validate
from gateway.store.tables import KEY_ID_LENGTH
from tests.fakes.idp import new_private_key, public_jwk

ISSUER = "https://login.example.com/realms/company"
GOOD = {"oidc_issuer": ISSUER, "oidc_audience": "ai-gateway"}
PRODUCTION = {"node_env": "production", "master_api_key": "m" * 40, "jwt_secret": "j" * 40}


def check(**fields: Any) -> None:
    validate(Settings(**fields))


def test_good_settings_pass_and_oidc_is_off_by_default() -> None:
    check(**GOOD)
    check(**GOOD, **PRODUCTION)
    check(**PRODUCTION, oidc_issuer="http://127.0.0.1:8080/realms/x", oidc_audience="a")  # loopback may be http
    assert Settings().oidc_issuer == "" and Settings().oidc_algorithms == ("RS256", "ES256", "EdDSA")


BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "HMAC algorithm": ({**GOOD, "oidc_algorithms": ("RS256", "HS256")}, "OIDC_ALGORITHMS"),
    "none": ({**GOOD, "oidc_algorithms": ("none",)}, "OIDC_ALGORITHMS"),
    "no algorithm": ({**GOOD, "oidc_algorithms": ()}, "OIDC_ALGORITHMS"),
    "no audience": ({"oidc_issuer": ISSUER}, "OIDC_AUDIENCE"),
    "JWKS URL alone": ({"oidc_jwks_url": ISSUER + "/certs"}, "OIDC_ISSUER"),
    "audience alone": ({"oidc_audience": "a"}, "OIDC_ISSUER"),
    "not a URL": ({**GOOD, "oidc_issuer": "login.example.com"}, "OIDC_ISSUER"),
    "credentials in the URL": ({**GOOD, "oidc_issuer": "https://u:p@login.example.com/"}, "OIDC_ISSUER"),
    "http in production": ({**GOOD, **PRODUCTION, "oidc_issuer": "http://login.example.com/realms/x"}, "OIDC_ISSUER"),
    "http JWKS in production": ({**GOOD, **PRODUCTION, "oidc_jwks_url": "http://login.example.com/certs"}, "OIDC_JWKS_URL"),
    "the gateway's own issuer": ({**GOOD, "oidc_issuer": "https://gw.example", "jwt_issuer": "https://gw.example"}, "OIDC_ISSUER"),
    "claim name": ({**GOOD, "oidc_caller_claim": "a b"}, "OIDC_CALLER_CLAIM"),
    "groups claim": ({**GOOD, "oidc_groups_claim": ""}, "OIDC_GROUPS_CLAIM"),
    "timeout 0": ({**GOOD, "oidc_jwks_timeout": 0.0}, "OIDC_JWKS_TIMEOUT"),
    "timeout too long": ({**GOOD, "oidc_jwks_timeout": 31.0}, "OIDC_JWKS_TIMEOUT"),
}


@pytest.mark.parametrize(("fields", "variable"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_settings_stop_the_gateway_naming_the_variable(fields: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check(**fields)
    assert str(raised.value).startswith(variable) and "\n" not in str(raised.value)


def parse(text: str) -> Any:
    return load_config(Settings(gateway_config="gateway.yaml"), text=text, environ={})


IDENTITY = """
identity:
  callers:
    alice@example.com: research-team
    "1234": key_0123456789abcdef
  groups:
    ml-engineers:
      allowed_models: ["gpt-4o*"]
      rate_limit_ai: 60 per minute
      budget_usd: 50
      budget_period: week
    staff: {}
  default:
    tokens_per_day: 100000
"""


def test_the_identity_section_alone_keeps_the_single_upstream() -> None:
    config = parse(IDENTITY)
    assert [backend.name for backend in config.backends] == ["default"]
    identity = config.identity
    assert identity.callers == {"alice@example.com": "research-team", "1234": "key_0123456789abcdef"}
    assert [group.name for group in identity.groups] == ["ml-engineers", "staff"]
    ml = identity.groups[0].fields
    assert ml["allowed_models"] == ["gpt-4o*"] and str(ml["budget_usd"]) == "50" and ml["budget_period"] == "week"
    assert identity.default == Template("default", {"tokens_per_day": 100000})
    assert parse("prices: {m: {input: 1, output: 2}}\n").identity.empty
    assert describe(config) == "1 backends, 1 model routes, identity: 2 callers, 2 groups and a default"  # start and reload logs


def test_resolution_order_is_caller_then_groups_in_file_order_then_default() -> None:
    identity = parse(IDENTITY).identity
    assert identity.resolve("alice@example.com", {"staff"}) == "research-team"
    assert identity.resolve("bob", {"staff", "ml-engineers"}) == identity.groups[0]
    assert identity.resolve("bob", {"staff"}) == identity.groups[1]
    assert identity.resolve("bob", set()) == identity.default
    assert IdentityMap().resolve("bob", {"staff"}) is None


IDENTITY_FAULTS = {
    "unknown section key": ("identity: {users: {}}\n", "identity.users: unknown key"),
    "not a mapping": ("identity: [a]\n", "identity: must be a mapping"),
    "unquoted number": ("identity: {callers: {1234: team}}\n", "identity.callers.(a key): must be a string (quote it)"),
    "key name not a string": ("identity: {callers: {alice: [a]}}\n", "identity.callers.alice: must be a string"),
    "unknown field": ("identity: {groups: {ml: {name: x}}}\n", "identity.groups.ml.name: unknown key"),
    "expiry is not a template field": ("identity: {groups: {ml: {expires_at: x}}}\n", "identity.groups.ml.expires_at: unknown key"),
    "bad rate limit": (
        "identity: {groups: {ml: {rate_limit_ai: lots}}}\n",
        "identity.groups.ml.rate_limit_ai: 'rate_limit_ai' must be",
    ),
    "bad budget": ("identity: {default: {budget_usd: -1}}\n", "identity.default.budget_usd: 'budget_usd' must be"),
    "rolling budget": (
        "identity: {groups: {ml: {budget_usd: 5, budget_reset: rolling}}}\n",
        "identity.groups.ml.budget_reset: rolling windows start at a key's creation",
    ),
    "bad models": ("identity: {groups: {ml: {allowed_models: []}}}\n", "identity.groups.ml.allowed_models: 'allowed_models' must be"),
    "duplicate after trimming": ("identity: {callers: {'a': x, ' a': y}}\n", "identity.callers. a: the same caller"),
}


@pytest.mark.parametrize(("text", "start"), IDENTITY_FAULTS.values(), ids=IDENTITY_FAULTS.keys())
def test_each_identity_fault_is_one_line_naming_the_file_and_the_key_path(text: str, start: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        parse(text)
    message = str(raised.value)
    assert message.startswith(f"gateway.yaml: {start}"), message
    assert "\n" not in message


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}")  # gateway.metrics' safe label values


@pytest.mark.parametrize(
    "value",
    ["alice", "alice@example.com", "x" * 35, "x" * 36, "auth0|6500a1b2c3d4e5f6a7b8c9d0", "é", "a b", "oidc:x", "\x00", "a" * 5000],
)
def test_caller_ids_fit_the_key_id_column_and_label_values(value: str) -> None:
    found = caller_id(value)
    assert found.startswith("oidc:") and len(found) <= KEY_ID_LENGTH
    assert LABEL.fullmatch(found)
    kept = re.fullmatch(r"[A-Za-z0-9._@+-]{1,35}", value) is not None
    assert (found == "oidc:" + value) is kept


def test_caller_ids_of_different_values_differ() -> None:
    values = ["x" * 36, "x" * 37, "x" * 36 + " ", "a b", "a_b", "a:b", "auth0|1", "auth0_1"]
    assert len({caller_id(value) for value in values}) == len(values)


def test_only_signature_keys_of_an_allowed_algorithm_are_kept() -> None:
    rsa_key, p256, ed = (new_private_key(alg) for alg in ("RS256", "ES256", "EdDSA"))
    p384 = ec.generate_private_key(ec.SECP384R1())
    document = {
        "keys": [
            public_jwk(rsa_key, "rsa-no-alg", "RS256", declare_alg=False),
            public_jwk(rsa_key, "rsa-ps", "PS256"),
            public_jwk(p256, "p256", "ES256", declare_alg=False),
            public_jwk(p384, "p384", "ES384", declare_alg=False),
            public_jwk(ed, "ed", "EdDSA"),
            {**public_jwk(ed, "ed-enc", "EdDSA"), "use": "enc"},
            {**public_jwk(rsa_key, "lies", "RS256"), "alg": "ES256"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            {"kid": "no-kty"},
            "not a key",
            public_jwk(rsa_key, "", "RS256"),
        ]
    }
    found = keys_from(document, ("RS256", "PS256", "ES256", "EdDSA"))
    assert {kid: sorted(key.algorithms) for kid, key in found.items()} == {
        "rsa-no-alg": ["PS256", "RS256"],
        "rsa-ps": ["PS256"],
        "p256": ["ES256"],
        "ed": ["EdDSA"],
    }
    assert keys_from(document, ("RS256",)).keys() == {"rsa-no-alg"}
    assert keys_from({"keys": "x"}, ("RS256",)) == {} and keys_from([], ("RS256",)) == {}


def test_the_readme_example_is_valid() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Identity provider (OIDC)\n", 1)[1].split("\n## ", 1)[0]
    env_block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    variables = dict(line.split("#")[0].strip().split("=", 1) for line in env_block.splitlines() if "=" in line)
    check(**{name.lower(): value for name, value in variables.items() if name.startswith("OIDC_")}, **PRODUCTION)
    config = parse(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    identity = config.identity
    assert identity.resolve("alice", {"ml-engineers"}) == "research-team"
    ml = identity.resolve("bob", {"staff", "ml-engineers"})
    assert isinstance(ml, Template) and ml.name == "ml-engineers" and ml.fields["tokens_per_day"] == 2_000_000
    assert identity.resolve("carol", set()) == identity.default
