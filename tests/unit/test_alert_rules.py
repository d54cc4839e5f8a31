"""The alert rules of deploy/prometheus fire when they should and stay quiet otherwise (issue 18).

Prometheus' own ``promtool`` checks the file (``check rules``) and evaluates each alert's
expression over made-up series (``test rules``, ``promql_expr_test``): an error ratio above
and below its threshold, too little traffic to judge, a quota store down under either
outage policy, usage records lost. The expression is read from the file, so the test
follows it. promtool is not a Python package: ``make test-tools`` takes it from Debian's
``prometheus`` package into ``.venv/bin`` when it is not on PATH (the file's PromQL and metric
names are also checked by tests/integration/test_deploy_observability.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "ai-proxy-alerts.yml"
PROMTOOL = shutil.which("promtool") or shutil.which("promtool", path=str(REPO_ROOT / ".venv" / "bin"))


def _rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def _requests(per_minute: int, route: str = "ai.chat", status: str = "200") -> str:
    labels = f'job="gw", instance="i1", route="{route}", method="POST", status="{status}"'
    return f"aiproxy_requests_total{{{labels}}}:0+{per_minute}x30"


# (alert, input series as "selector:values", the labels it should fire with, or None: quiet)
CASES = {
    "error ratio 10 %": (
        "AIProxyUpstreamErrorRatioHigh",
        [_requests(60), 'aiproxy_upstream_errors_total{job="gw",kind="upstream_timeout"}:0+6x30'],
        {"job": "gw"},
    ),
    "error ratio 10 % is not critical": (
        "AIProxyUpstreamErrorRatioCritical",
        [_requests(60), 'aiproxy_upstream_errors_total{job="gw",kind="upstream_timeout"}:0+6x30'],
        None,
    ),
    "error ratio 30 % is critical": (
        "AIProxyUpstreamErrorRatioCritical",
        [_requests(60), 'aiproxy_upstream_errors_total{job="gw",kind="upstream_unavailable"}:0+18x30'],
        {"job": "gw"},
    ),
    "error ratio 2 %": (
        "AIProxyUpstreamErrorRatioHigh",
        [_requests(100), 'aiproxy_upstream_errors_total{job="gw",kind="upstream_timeout"}:0+2x30'],
        None,
    ),
    "too little traffic to judge": (
        "AIProxyUpstreamErrorRatioHigh",
        [_requests(3), 'aiproxy_upstream_errors_total{job="gw",kind="upstream_timeout"}:0+2x30'],
        None,
    ),
    "a backend failing a quarter": (
        "AIProxyBackendFailing",
        [
            'aiproxy_backend_attempts_total{job="gw",backend="a",outcome="ok"}:0+45x30',
            'aiproxy_backend_attempts_total{job="gw",backend="a",outcome="timeout"}:0+15x30',
            'aiproxy_backend_attempts_total{job="gw",backend="b",outcome="ok"}:0+60x30',
        ],
        {"job": "gw", "backend": "a"},
    ),
    "an open circuit": (
        "AIProxyBackendCircuitOpen",
        ['aiproxy_backend_circuit_state{job="gw",instance="i1",backend="a",model="*"}:2x30'],
        {"job": "gw", "backend": "a", "model": "*"},
    ),
    "a half-open circuit": (
        "AIProxyBackendCircuitOpen",
        ['aiproxy_backend_circuit_state{job="gw",instance="i1",backend="a",model="*"}:1x30'],
        None,
    ),
    "quota store down, closed policy": (
        "AIProxyQuotaStoreOutage",
        ['aiproxy_quota_rejections_total{job="gw",kind="storage-unavailable"}:0+5x30', _requests(60)],
        {"job": "gw"},
    ),
    "quota store down, open policy": ("AIProxyQuotaStoreOutage", [_requests(6, route="meta.ready", status="503")], {"job": "gw"}),
    "quota store up": (
        "AIProxyQuotaStoreOutage",
        [_requests(6, route="meta.ready"), 'aiproxy_quota_rejections_total{job="gw",kind="ai"}:0+5x30'],
        None,
    ),
    "usage records lost": (
        "AIProxyUsageRecordsDropped",
        ['aiproxy_usage_records_dropped_total{job="gw",instance="i1"}:0x20 3x10'],
        {"job": "gw"},
    ),
    "no usage record lost": ("AIProxyUsageRecordsDropped", ['aiproxy_usage_records_dropped_total{job="gw",instance="i1"}:0x30'], None),
    "a usage backlog": ("AIProxyUsageQueueBacklog", ['aiproxy_usage_queue_depth{job="gw",instance="i1"}:1500x30'], {"job": "gw"}),
    "a usage queue at work": ("AIProxyUsageQueueBacklog", ['aiproxy_usage_queue_depth{job="gw",instance="i1"}:20x30'], None),
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is missing: make test-tools fetches it (Debian's prometheus package)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules_file() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0 and f"SUCCESS: {len(_rules())} rules found" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_the_alert_fires_when_it_should(case: str, tmp_path: Path) -> None:
    alert, series, fires = CASES[case]
    rule = _rules()[alert]
    by = ", ".join(sorted(fires)) if fires else "job"
    expected = (
        [{"labels": "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(fires.items())) + "}", "value": 1}] if fires else []
    )
    test = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": item.rsplit(":", 1)[0], "values": item.rsplit(":", 1)[1]} for item in series],
                # The alert's condition at 25 minutes, counted per its labels: 1 where it holds, nothing
                # where not ("for" is not evaluated here; the series keep their rate throughout).
                "promql_expr_test": [{"expr": f"count by ({by}) ({rule['expr']})", "eval_time": "25m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test))
    done = _promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
