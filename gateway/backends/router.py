"""The routing table of one worker process: each model route's deployments, their live
state, the retry budget and one upstream client per backend.

Built once per app from the :class:`~gateway.backends.config.GatewayConfig`
(:func:`gateway.backends.init_app`); a changed config file arrives with new worker
processes (``SIGHUP``), so nothing here is ever rebuilt in place. State is per worker
process: each worker learns on its own that a backend is down, from its own attempts
(with several workers, a dead backend costs each worker its own few failures before
its circuit opens there).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from gateway.backends.breaker import BreakerPolicy
from gateway.backends.budget import RetryBudget
from gateway.backends.config import GatewayConfig, ModelRoute, Routing
from gateway.backends.state import DeploymentState
from gateway.upstream.client import UpstreamClient


class Router:
    """Routes, deployment states, the retry budget and the backends' clients (see the module)."""

    def __init__(
        self,
        config: GatewayConfig,
        clients: dict[str, UpstreamClient],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.routing: Routing = config.routing
        self.clients = clients
        self.rng = rng or random.Random()
        self._clock = clock
        routing = config.routing
        breaker = BreakerPolicy(
            failures=routing.breaker_failures,
            failure_ratio=routing.breaker_failure_ratio,
            window=routing.breaker_window,
            min_requests=routing.breaker_min_requests,
            cooldown=routing.breaker_cooldown,
        )
        self.budget = RetryBudget(routing.retry_budget_ratio, routing.retry_budget_window, routing.retry_budget_min, clock=clock)
        self._states: dict[str, list[DeploymentState]] = {}
        for route in config.models:
            states: list[DeploymentState] = []
            for deployment in route.deployments:
                backend = config.backend(deployment.backend)
                key = f"{deployment.backend}/{deployment.model or '*'}"
                if any(state.key == key for state in states):
                    key = f"{key}#{len(states)}"
                states.append(
                    DeploymentState(
                        key,
                        deployment.backend,
                        deployment.model,
                        weight=deployment.weight,
                        priority=deployment.priority,
                        max_concurrent=backend.max_concurrent,
                        breaker=breaker,
                        clock=clock,
                    )
                )
            self._states[route.name] = states
        self._totals = {
            route.name: config.backend(route.deployments[0].backend).timeouts.total for route in config.models if route.deployments
        }
        self._single = config.models[0] if len(config.models) == 1 and config.models[0].name == "*" else None

    def route_for(self, model: str | None) -> ModelRoute | None:
        """The route of a public model name (``None`` when no route matches)."""
        if self._single is not None:
            return self._single
        return self.config.route_for(model)

    def total_timeout(self, route: ModelRoute) -> float:
        """A request's deadline on ``route``, all attempts included: its first backend's ``timeouts.total``."""
        return self._totals[route.name]

    def throttled_for(self, route: ModelRoute) -> float | None:
        """When every deployment of ``route`` that is unavailable only because a backend asked
        for a pause (``Retry-After``): how long until the first pause ends. ``None`` when
        some are unavailable for another reason only (circuit open, concurrency cap)."""
        now = self._clock()
        pauses = [state.paused_for(now) for state in self._states[route.name]]
        waits = [pause for pause in pauses if pause is not None]
        return min(waits) if waits else None

    def states(self, route: ModelRoute) -> list[DeploymentState]:
        return self._states[route.name]

    def client(self, backend: str) -> UpstreamClient:
        return self.clients[backend]

    def snapshot(self) -> list[dict[str, object]]:
        """Every deployment's state, by route (``GET /admin/backends``)."""
        return [{"route": route.name, **state.snapshot()} for route in self.config.models for state in self._states[route.name]]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
