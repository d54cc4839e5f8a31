"""Configuration: names, defaults, derivation, validation, development secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import SECRET_FIELDS, ConfigError, Settings, load

STRONG = "s" * 40
STRONG2 = "t" * 40


def test_original_variables_and_defaults(tmp_path: Path) -> None:
    settings = load(environ={"MASTER_API_KEY": "k", "JWT_SECRET": "j"}, env_file=str(tmp_path / "none"))
    assert settings.ai_proxy_host == "0.0.0.0"
    assert settings.ai_proxy_port == 8767
    assert settings.ai_api_url == "http://localhost:11434/v1/completions"
    assert settings.upstream_base_url == "http://localhost:11434/v1"
    assert settings.rate_limit_general == "100 per 15 minutes"
    assert settings.rate_limit_ai == "20 per 15 minutes"
    assert settings.rate_limit_storage_uri == "memory://"
    assert settings.jwt_expires_in == 3600
    assert settings.max_request_bytes == 8 * 1024 * 1024
    assert settings.trusted_proxy_count == 0
    assert settings.allowed_origins == ()
    assert not settings.production


def test_environment_is_read(tmp_path: Path) -> None:
    environ = {
        "AI_PROXY_HOST": "127.0.0.1",
        "AI_PROXY_PORT": "9000",
        "MASTER_API_KEY": STRONG,
        "JWT_SECRET": STRONG2,
        "AI_API_URL": "https://api.openai.com/v1/completions",
        "AI_API_KEY": "sk-x",
        "ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "NODE_ENV": "production",
        "RATE_LIMIT_GENERAL": "5 per minute",
        "RATE_LIMIT_AI": "2 per minute",
        "JWT_EXPIRES_IN": "60",
        "MAX_REQUEST_BYTES": "1024",
        "TRUSTED_PROXY_COUNT": "1",
    }
    s = load(environ=environ, env_file=str(tmp_path / "none"))
    assert (s.ai_proxy_host, s.ai_proxy_port) == ("127.0.0.1", 9000)
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.production and s.upstream_base_url == "https://api.openai.com/v1"
    assert (s.rate_limit_general, s.rate_limit_ai, s.jwt_expires_in) == ("5 per minute", "2 per minute", 60)
    assert (s.max_request_bytes, s.trusted_proxy_count) == (1024, 1)


def test_metrics_settings(tmp_path: Path) -> None:
    keys = {"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2}
    s = load(
        environ={**keys, "METRICS_TOKEN": "scrape-me", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")},
        env_file=str(tmp_path / "none"),
    )
    assert (s.metrics_token, s.prometheus_multiproc_dir) == ("scrape-me", str(tmp_path / "m"))
    assert "metrics_token" in SECRET_FIELDS
    unset = load(environ=keys, env_file=str(tmp_path / "none"))
    assert (unset.metrics_token, unset.prometheus_multiproc_dir) == ("", "")


def test_app_env_is_accepted_for_production(tmp_path: Path) -> None:
    s = load(environ={"APP_ENV": "production", "MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2}, env_file=str(tmp_path / "none"))
    assert s.production


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("AI_PROXY_PORT=9100\nMASTER_API_KEY=from-file\nJWT_SECRET=from-file-too\n")
    s = load(environ={"MASTER_API_KEY": "from-env"}, env_file=str(env_file))
    assert s.ai_proxy_port == 9100
    assert s.master_api_key == "from-env"
    assert s.jwt_secret == "from-file-too"


def test_explicit_base_url_wins(tmp_path: Path) -> None:
    s = load(environ={"AI_API_BASE_URL": "http://h:1/v1/", "MASTER_API_KEY": "k", "JWT_SECRET": "j"}, env_file=str(tmp_path / "none"))
    assert s.upstream_base_url == "http://h:1/v1"


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"JWT_SECRET": STRONG2}, "MASTER_API_KEY"),
        ({"MASTER_API_KEY": STRONG}, "JWT_SECRET"),
        ({"MASTER_API_KEY": "short-secret-value", "JWT_SECRET": STRONG2}, "MASTER_API_KEY"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": "short-secret-value"}, "JWT_SECRET"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "ALLOWED_ORIGINS": "*"}, "ALLOWED_ORIGINS"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "AI_API_URL": "ftp://x/v1"}, "AI_API_URL"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "AI_API_URL": "not a url"}, "AI_API_URL"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_AI": "lots please"}, "RATE_LIMIT_AI"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_GENERAL": "0x per y"}, "RATE_LIMIT_GENERAL"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_AI": "5 per 99999999999999 years"}, "RATE_LIMIT_AI"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_GENERAL": "0 per minute"}, "RATE_LIMIT_GENERAL"),
        (
            {"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_AUTH_FAILURES": "2000000000 per hour"},
            "RATE_LIMIT_AUTH_FAILURES",
        ),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "AI_PROXY_PORT": "eighty"}, "AI_PROXY_PORT"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "GATEWAY_WORKERS": "4"}, "GATEWAY_WORKERS"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_STRATEGY": "leaky"}, "RATE_LIMIT_STRATEGY"),
        (
            {"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_STORAGE_URI": "mongodb://db-host-value"},
            "RATE_LIMIT_STORAGE_URI",
        ),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_ON_STORAGE_ERROR": "maybe"}, "RATE_LIMIT_ON_STORAGE_ERROR"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "RATE_LIMIT_CONCURRENT": "-1"}, "RATE_LIMIT_CONCURRENT"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "METRICS_TOKEN": "short-metrics-token"}, "METRICS_TOKEN"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "METRICS_TOKEN": STRONG + " " + STRONG2}, "METRICS_TOKEN"),
        ({"MASTER_API_KEY": STRONG, "JWT_SECRET": STRONG2, "PROMETHEUS_MULTIPROC_DIR": __file__}, "PROMETHEUS_MULTIPROC_DIR"),
    ],
)
def test_production_refuses_bad_config_naming_the_variable(tmp_path: Path, environ: dict, names: str) -> None:
    environ = {"NODE_ENV": "production", **environ}
    with pytest.raises(ConfigError) as caught:
        load(environ=environ, env_file=str(tmp_path / "none"))
    message = str(caught.value)
    assert names in message
    for value in environ.values():
        if len(value) > 8 and value not in ("production",):
            assert value not in message  # never the value


def test_development_generates_secrets_once_and_shares_them(tmp_path: Path) -> None:
    first = load(environ={}, env_file=str(tmp_path / "none"), overrides={"instance_path": str(tmp_path / "i")})
    second = load(environ={}, env_file=str(tmp_path / "none"), overrides={"instance_path": str(tmp_path / "i")})
    assert len(first.master_api_key) >= 32 and len(first.jwt_secret) >= 32
    assert first.master_api_key != first.jwt_secret
    assert (second.master_api_key, second.jwt_secret) == (first.master_api_key, first.jwt_secret)
    stored = json.loads((tmp_path / "i" / "secrets.json").read_text())
    assert stored["master_api_key"] == first.master_api_key
    assert (tmp_path / "i" / "secrets.json").stat().st_mode & 0o077 == 0
    assert set(first.generated) == {"master_api_key", "jwt_secret"}


@pytest.mark.slow  # six fresh interpreters
def test_concurrent_workers_agree_on_generated_secrets(tmp_path: Path) -> None:
    code = (
        "from gateway.config import load;"
        f"s=load(environ={{}}, env_file='/nonexistent', overrides={{'instance_path': {str(tmp_path)!r}}});"
        "print(s.master_api_key)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    keys = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) >= 32


def test_production_never_generates_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MASTER_API_KEY"):
        load(environ={"NODE_ENV": "production"}, env_file=str(tmp_path / "none"), overrides={"instance_path": str(tmp_path / "i")})
    assert not (tmp_path / "i").exists()


def test_worker_concurrency_follows_worker_class() -> None:
    assert Settings(gateway_worker_class="gevent", gateway_worker_connections=500).worker_concurrency == 500
    assert Settings(gateway_worker_class="gthread", gateway_threads=16).worker_concurrency == 16


def test_workers_default_to_one_on_memory_and_one_per_core_with_redis(tmp_path: Path) -> None:
    import os

    base = {"MASTER_API_KEY": "k", "JWT_SECRET": "j"}
    assert load(environ=base, env_file=str(tmp_path / "none")).worker_processes == 1
    shared = load(environ={**base, "RATE_LIMIT_STORAGE_URI": "redis://localhost:6379/0"}, env_file=str(tmp_path / "none"))
    assert shared.worker_processes == len(os.sched_getaffinity(0))
    assert (
        load(
            environ={**base, "RATE_LIMIT_STORAGE_URI": "redis://h:1/0", "GATEWAY_WORKERS": "3"}, env_file=str(tmp_path / "none")
        ).worker_processes
        == 3
    )


def test_workers_follow_the_cores_the_process_may_use() -> None:
    """Pinned to one core (taskset, a cpuset), the default is one worker, not one per core of the machine."""
    import subprocess
    import sys

    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from gateway.config import load; "
        "print(load(environ={'RATE_LIMIT_STORAGE_URI': 'redis://h:1/0'}, env_file='/dev/null').worker_processes)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_quota_defaults(tmp_path: Path) -> None:
    s = load(environ={"MASTER_API_KEY": "k", "JWT_SECRET": "j"}, env_file=str(tmp_path / "none"))
    assert (s.rate_limit_strategy, s.rate_limit_on_storage_error, s.rate_limit_concurrent) == ("moving-window", "open", 0)
    assert s.rate_limit_storage_timeout == 0.5
