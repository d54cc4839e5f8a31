"""The backends file (GATEWAY_CONFIG): the model it parses to, and one line per fault.

Every fault names the file and the key path and never quotes a value: the canary
secrets below are in the environment or written where a secret must not be, and no
message may contain them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.config import (
    MAX_FILE_BYTES,
    Backend,
    ConfigFileError,
    Deployment,
    GatewayConfig,
    ModelRoute,
    Routing,
    Timeouts,
    from_environment,
    load_config,
)
from gateway.config import ConfigError, Settings
from tests.conftest import CANARY_AI_API_KEY

OPENAI_KEY = "sk-openai-canary-4f1c9d"
AZURE_KEY = "azure-canary-77be01"
ENV = {"OPENAI_API_KEY": OPENAI_KEY, "AZURE_OPENAI_API_KEY": AZURE_KEY, "B_KEY": "b-canary-3c2e"}
SECRETS = (OPENAI_KEY, AZURE_KEY, "b-canary-3c2e", CANARY_AI_API_KEY, "inline-canary-51aa")  # the last one: written inline below

# The example of DESIGN-14.md, as an operator would write it.
FULL = """\
backends:
  - name: openai
    url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
    timeouts: {connect: 5, first_byte: 60, idle: 60, total: 600}
    max_concurrent: 200
    weight: 1
    headers: {OpenAI-Organization: org-123}
  - name: azure-east
    dialect: azure
    url: https://my-resource.openai.azure.com
    api_version: "2024-10-21"
    api_key_env: AZURE_OPENAI_API_KEY
  - {name: vllm-a, url: http://10.0.0.11:8000/v1}
  - {name: vllm-b, url: http://10.0.0.12:8000/v1}
  - {name: ollama, url: http://10.0.0.20:11434/v1}
models:
  - name: gpt-4o
    deployments:
      - {backend: openai}
      - {backend: azure-east, model: gpt-4o-prod, priority: 1}
  - name: llama-3.1-8b
    deployments:
      - {backend: vllm-a, model: meta-llama/Llama-3.1-8B-Instruct, weight: 2}
      - {backend: vllm-b, model: meta-llama/Llama-3.1-8B-Instruct}
      - {backend: ollama, model: "llama3.1:8b", priority: 1}
routing:
  max_attempts: 3
  retry_on: [connect, timeout, 429, 500, 502, 503, 504]
  backoff: {base: 0.1, max: 2}
  retry_after_max: 30
  retry_budget: {ratio: 0.2, window: 10, min_retries: 3}
  circuit_breaker: {failures: 5, failure_ratio: 0.5, window: 10, min_requests: 10, cooldown: 5}
  expose_backend_header: false
"""


def parse(text: str, environ: dict[str, str] | None = None, **settings: object) -> GatewayConfig:
    return load_config(Settings(gateway_config="gateway.yaml", **settings), text=text, environ=ENV if environ is None else environ)  # type: ignore[arg-type]


def backend(name: str, url: str, **fields: object) -> Backend:
    values: dict[str, object] = {
        "dialect": "openai",
        "api_key": "",
        "api_key_env": "",
        "api_version": "",
        "timeouts": Timeouts(5.0, 120.0, 120.0, 600.0),  # Settings' UPSTREAM_* defaults
        "max_concurrent": 0,
        "weight": 1.0,
        "headers": (),
    }
    values.update(fields)
    return Backend(name=name, url=url, **values)  # type: ignore[arg-type]


def test_the_full_example_parses_to_these_records() -> None:
    llama = "meta-llama/Llama-3.1-8B-Instruct"
    expected = GatewayConfig(
        source="gateway.yaml",
        backends=(
            backend(
                "openai",
                "https://api.openai.com/v1",
                api_key=OPENAI_KEY,
                api_key_env="OPENAI_API_KEY",
                timeouts=Timeouts(5.0, 60.0, 60.0, 600.0),
                max_concurrent=200,
                headers=(("OpenAI-Organization", "org-123"),),
            ),
            backend(
                "azure-east",
                "https://my-resource.openai.azure.com",
                dialect="azure",
                api_key=AZURE_KEY,
                api_key_env="AZURE_OPENAI_API_KEY",
                api_version="2024-10-21",
            ),
            backend("vllm-a", "http://10.0.0.11:8000/v1"),
            backend("vllm-b", "http://10.0.0.12:8000/v1"),
            backend("ollama", "http://10.0.0.20:11434/v1"),
        ),
        models=(
            ModelRoute("gpt-4o", (Deployment("openai", None, 1.0, 0), Deployment("azure-east", "gpt-4o-prod", 1.0, 1))),
            ModelRoute(
                "llama-3.1-8b",
                (
                    Deployment("vllm-a", llama, 2.0, 0),
                    Deployment("vllm-b", llama, 1.0, 0),
                    Deployment("ollama", "llama3.1:8b", 1.0, 1),
                ),
            ),
        ),
        routing=Routing(),  # the example spells out every default
    )
    config = parse(FULL)
    assert config == expected
    assert config.from_file and config.backend("azure-east").api_version == "2024-10-21"
    # A backend's repr (logs, tracebacks) shows neither its key nor its header values.
    assert OPENAI_KEY not in repr(config) and "org-123" not in repr(config)


def test_without_a_file_it_is_the_single_upstream_of_today() -> None:
    settings = Settings(
        ai_api_url="http://upstream.test:8000/v1/chat/completions",
        ai_api_key=CANARY_AI_API_KEY,
        upstream_connect_timeout=2,
        upstream_read_timeout=30,
        upstream_total_timeout=90,
    )
    config = load_config(settings)
    assert config == from_environment(settings)
    assert config.source is None and not config.from_file
    assert config.backends == (
        backend(
            "default",
            "http://upstream.test:8000/v1",
            api_key=CANARY_AI_API_KEY,
            api_key_env="AI_API_KEY",
            timeouts=Timeouts(2.0, 30.0, 30.0, 90.0),
        ),
    )
    assert config.models == (ModelRoute("*", (Deployment("default", None, 1.0, 0),)),)
    assert config.routing.max_attempts == 1 and config.routing.breaker_failures == 0  # no retry, no circuit breaker
    for model in ("gpt-4o", "anything/at:all", None):
        assert config.route_for(model) is config.models[0]
    assert config.public_models() == ()


ROUTES = """\
backends: [{name: a, url: http://127.0.0.1:8000/v1}]
models:
  - {name: "llama-*", deployments: [{backend: a}]}
  - {name: gpt-4o, deployments: [{backend: a}]}
  - {name: "gpt-4*", deployments: [{backend: a}]}
  - {name: "gpt-*", deployments: [{backend: a}]}
  - {name: llama-3, deployments: [{backend: a, model: meta/llama-3}]}
"""


def test_route_for_tries_exact_names_first_then_globs_in_file_order() -> None:
    config = parse(ROUTES)
    assert config.route_for("llama-3").name == "llama-3"  # type: ignore[union-attr]  # exact, though a glob comes first
    assert config.route_for("llama-2").name == "llama-*"  # type: ignore[union-attr]
    assert config.route_for("gpt-4o").name == "gpt-4o"  # type: ignore[union-attr]
    assert config.route_for("gpt-4-turbo").name == "gpt-4*"  # type: ignore[union-attr]  # the first glob that matches
    assert config.route_for("gpt-3.5").name == "gpt-*"  # type: ignore[union-attr]
    assert config.route_for("GPT-4O") is None  # case matters, as for the upstreams
    assert config.route_for("mistral") is None and config.route_for(None) is None  # no "*" route


def test_public_models_are_the_exact_names_in_file_order() -> None:
    assert parse(ROUTES).public_models() == ("gpt-4o", "llama-3")
    assert parse(FULL).public_models() == ("gpt-4o", "llama-3.1-8b")


def test_variables_are_interpolated_and_keys_come_from_the_environment() -> None:
    text = """\
backends:
  - name: a
    url: http://${VLLM_HOST}:8000/v1
    api_key: ${A_KEY}
    headers: {Authorization-Extra: "Bearer ${EXTRA_TOKEN}", X-Cost: "$5"}
models: [{name: m, deployments: [{backend: a}]}]
"""
    config = parse(text, {"VLLM_HOST": "10.1.2.3", "A_KEY": OPENAI_KEY, "EXTRA_TOKEN": AZURE_KEY})
    (found,) = config.backends
    assert found.url == "http://10.1.2.3:8000/v1"
    assert (found.api_key, found.api_key_env) == (OPENAI_KEY, "A_KEY")
    assert found.headers == (("Authorization-Extra", f"Bearer {AZURE_KEY}"), ("X-Cost", "$5"))
    assert OPENAI_KEY not in repr(found) and AZURE_KEY not in repr(found)


def test_variables_come_from_the_env_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text(f"OPENAI_API_KEY={OPENAI_KEY}\n")
    monkeypatch.setenv("AI_PROXY_ENV_FILE", str(env_file))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    text = "backends: [{name: a, url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}]\n" + MODELS
    assert load_config(Settings(gateway_config="gateway.yaml"), text=text).backends[0].api_key == OPENAI_KEY


def test_the_file_is_read_from_gateway_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(FULL)
    config = load_config(Settings(gateway_config=str(path)), environ=ENV)
    assert config.source == str(path) and len(config.backends) == 5
    with pytest.raises(ConfigFileError, match=r"^/nonexistent/gateway\.yaml: cannot be read \(No such file or directory\)$"):
        load_config(Settings(gateway_config="/nonexistent/gateway.yaml"), environ=ENV)
    path.write_text("#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigFileError, match=f"^{path}: larger than {MAX_FILE_BYTES} bytes$"):
        load_config(Settings(gateway_config=str(path)), environ=ENV)


# --------------------------------------------------------------------------- #
# Faults: (a file, the start of its one-line error after "gateway.yaml: ")
# --------------------------------------------------------------------------- #
MODELS = "models: [{name: m, deployments: [{backend: a}]}]\n"
URL = "url: http://127.0.0.1:8000/v1"
A = f"{{name: a, {URL}}}"


def one(backend_line: str) -> str:
    """A file with one backend (``a``) and one model routed to it."""
    return f"backends: [{backend_line}]\n{MODELS}"


def a_with(fields: str) -> str:
    return one(f"{{name: a, {URL}, {fields}}}")


def models(listed: str) -> str:
    return f"backends: [{A}]\nmodels: [{listed}]\n"


def routing(section: str) -> str:
    return one(A) + f"routing: {section}\n"


SECRET = "inline-canary-51aa"
FAULTS = {
    "unknown key": (a_with("nmae: b"), "backends[0].nmae: unknown key (known: name, url, dialect,"),
    "unknown top key": (one(A) + "model: {}\n", "model: unknown key (known: backends, models, routing, prices, identity)"),
    "missing backends": (MODELS, "backends: required"),
    "missing models": (f"backends: [{A}]\n", "models: required"),
    "missing url": (one("{name: a}"), "backends[0].url: required"),
    "missing deployments": (models("{name: m}"), "models[0].deployments: required"),
    "bad url scheme": (one("{name: a, url: ftp://127.0.0.1/v1}"), "backends[0].url: must be an http:// or https:// URL"),
    "url without host": (one("{name: a, url: 'http:///v1'}"), "backends[0].url: must be an http:// or https:// URL"),
    "url credentials": (one(f"{{name: a, url: 'http://me:{SECRET}@h/v1'}}"), "backends[0].url: must not carry credentials"),
    "url query": (one(f"{{name: a, url: 'http://h/v1?key={SECRET}'}}"), "backends[0].url: must not have a query"),
    "url operation": (one("{name: a, url: http://h/v1/chat/completions}"), "backends[0].url: must be the API's base"),
    "duplicate backend": (f"backends: [{A}, {A}]\n{MODELS}", "backends[1].name: a duplicate of backends[0].name"),
    "duplicate model": (
        models("{name: m, deployments: [{backend: a}]}, {name: m, deployments: [{backend: a}]}"),
        "models[1].name: a duplicate of models[0].name",
    ),
    "duplicate deployment": (
        models("{name: m, deployments: [{backend: a}, {backend: a}]}"),
        "models[0].deployments[1]: the same backend and model as models[0].deployments[0]",
    ),
    "unknown backend": (
        models("{name: m, deployments: [{backend: b}]}"),
        "models[0].deployments[0].backend: names no backend in backends (known: a)",
    ),
    "inline api_key": (a_with(f"api_key: {SECRET}"), "backends[0].api_key: a secret written inline"),
    "key in api_key_env": (a_with(f"api_key_env: {SECRET}"), "backends[0].api_key_env: must name an environment"),
    "inline authorization": (
        a_with(f"headers: {{Authorization: Bearer {SECRET}}}"),
        "backends[0].headers.Authorization: a secret written inline",
    ),
    "inline token header": (a_with(f"headers: {{X-Auth-Token: {SECRET}}}"), "backends[0].headers.X-Auth-Token: a secret"),
    "gateway header": (a_with("headers: {Host: example.com}"), "backends[0].headers.Host: set by the gateway itself"),
    "unset ${VAR}": (one("{name: a, url: 'http://${MISSING_HOST}/v1'}"), "backends[0].url: the variable MISSING_HOST is not set"),
    "malformed ${VAR}": (one("{name: a, url: 'http://${missing-host}/v1'}"), "backends[0].url: has a malformed ${VARIABLE}"),
    "unset api_key_env": (a_with("api_key_env: NOT_SET_KEY"), "backends[0].api_key_env: the variable NOT_SET_KEY is not set"),
    "both key forms": (a_with("api_key_env: B_KEY, api_key: '${B_KEY}'"), "backends[0].api_key: set api_key or api_key_env"),
    "azure without api_version": (
        one("{name: a, dialect: azure, url: https://x.openai.azure.com}"),
        "backends[0].api_version: required for dialect azure",
    ),
    "api_version for openai": (a_with("api_version: '1'"), "backends[0].api_version: only for dialect azure"),
    "api_version a date": (
        one("{name: a, dialect: azure, url: https://x.openai.azure.com, api_version: 2024-10-21}"),
        "backends[0].api_version: must be a string, not a date (quote it)",
    ),
    "unknown dialect": (a_with("dialect: anthropic"), "backends[0].dialect: must be one of openai, azure"),
    "bad backend name": (one(f"{{name: 'a/b', {URL}}}"), "backends[0].name: must be 1 to 64 letters"),
    "yaml syntax": ("backends:\n  - name: a\n    url: [unclosed\nmodels: []\n", "line 4, column "),
    "key written twice": (f"backends:\n  - name: a\n    {URL}\n    {URL}\n{MODELS}", "line 4: the key url is written twice"),
    "max_attempts out of range": (routing("{max_attempts: 11}"), "routing.max_attempts: must be from 1 to 10"),
    "unknown routing key": (routing("{backoff: {cap: 1}}"), "routing.backoff.cap: unknown key (known: base, max)"),
    "retry_on": (routing("{retry_on: [connect, 404]}"), "routing.retry_on[1]: must be connect, timeout, 408"),
    "ratio": (routing("{retry_budget: {ratio: 1.5}}"), "routing.retry_budget.ratio: must be from 0 to 1"),
    "backoff order": (routing("{backoff: {base: 3, max: 1}}"), "routing.backoff.max: must not be less than"),
    "zero timeout": (a_with("timeouts: {connect: 0}"), "backends[0].timeouts.connect: must be greater than 0"),
    "weight a boolean": (a_with("weight: true"), "backends[0].weight: must be a number, not true/false"),
    "negative priority": (
        models("{name: m, deployments: [{backend: a, priority: -1}]}"),
        "models[0].deployments[0].priority: must be at least 0",
    ),
    "no deployments": (models("{name: m, deployments: []}"), "models[0].deployments: must not be empty"),
    "not a mapping": ("- backends\n- models\n", "must be a mapping of backends, models, routing"),
    "backend not a mapping": (f"backends: [a]\n{MODELS}", "backends[0]: must be a mapping, not a string"),
    "empty file": ("# nothing yet\n", "the file is empty"),
}


@pytest.mark.parametrize(("text", "start"), FAULTS.values(), ids=FAULTS.keys())
def test_each_fault_is_one_line_naming_the_file_and_the_key_path(text: str, start: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        parse(text)
    message = str(raised.value)
    assert isinstance(raised.value, ConfigError)  # so wsgi.py and gunicorn.conf.py show it in one line
    assert message.startswith(f"gateway.yaml: {start}"), message
    assert "\n" not in message
    assert not [secret for secret in SECRETS if secret in message], message


def test_a_variable_holding_a_line_break_is_refused_without_showing_it() -> None:
    text = a_with("headers: {X-Tenant: '${TENANT}'}")
    with pytest.raises(ConfigFileError) as raised:
        parse(text, {"TENANT": f"t1\r\nX-Injected: {SECRET}"})
    assert str(raised.value) == "gateway.yaml: backends[0].headers.X-Tenant: the variable TENANT holds a line break"
