"""Active health: probes of each deployment, predictive demotion, shared ejections.

:class:`HealthMonitor` is one asyncio task owned by the app's lifespan (a config reload
starts a new one on the new fleet and stops the old, like the metrics scraper). Each time it
wakes it

- probes the deployments that are due: ``GET {origin}{path}`` (``deployments[].health``; a
  2xx within ``timeout_s`` passes), every ``interval_s`` +-10%, first ones spread over one
  interval. ``fall`` failures in a row mark a deployment down (out of rotation, like an
  ejected one), ``rise`` passes in a row mark it up: its passive ejection is lifted (the
  probe is the better witness) and it ramps up over ``health.slow_start_s``. Hysteresis
  (rise 2, fall 3 by default) and the ramp keep a flaky backend from flapping;
- every ``health.sync_interval_s``: recomputes predictive demotion
  (:func:`~aigw.routing.health.demote`) and reads the ejections other instances shared
  (:class:`SharedEjections`; with Redis), applying them here;
- publishes this instance's new ejections and probe-downs at once (the outlier detector
  wakes it), so other instances learn of them within their next sync.

Probes of one wake run concurrently (one short-lived coroutine each, bounded by the fleet);
no task lives per deployment. Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from aigw.config import HealthConfig, ProbeConfig
from aigw.fleet.deployment import Deployment, DeploymentState
from aigw.routing.health import demote
from aigw.routing.router import Router

__all__ = ["HealthMonitor", "SharedEjections", "probe_url", "record_probe"]

log = logging.getLogger("aigw.health")


class SharedEjections(Protocol):
    """Where ejections are shared between instances (:mod:`aigw.state.ejections`)."""

    async def eject(self, deployment_id: str, seconds: float, owner: str) -> None: ...

    async def ejections(self, deployment_ids: Sequence[str], owner: str) -> dict[str, float]: ...

    async def clear(self, deployment_id: str) -> None: ...


def probe_url(deployment: Deployment, probe: ProbeConfig) -> str:
    """``path`` on the origin of the deployment's ``base_url`` (vLLM, SGLang and TGI serve
    ``/health`` there, beside ``/v1``)."""
    parts = urlsplit(deployment.config.base_url)
    return f"{parts.scheme}://{parts.netloc}{probe.path}"


def record_probe(state: DeploymentState, ok: bool, probe: ProbeConfig, now: float) -> bool | None:
    """Count one probe result; the new verdict when it changed (True: up, False: down)."""
    up = state.probe_up is not False  # not probed yet counts as up: startup sends traffic
    if ok == up:
        state.probe_streak = 0
        state.probe_up = up
        return None
    state.probe_streak += 1
    if state.probe_streak < (probe.rise if ok else probe.fall):
        return None
    state.probe_streak = 0
    state.probe_up = ok
    if ok:
        # Back: the probe is a better witness than the failures counted while it was down.
        state.consecutive_failures = 0
        state.ejections = 0
        state.ejected_until = min(state.ejected_until, max(state.retry_after_until, now))
        state.slow_start_from = max(now, state.ejected_until)
    return ok


@dataclass(slots=True)
class _Target:
    deployment: Deployment
    probe: ProbeConfig
    url: str
    due: float


class HealthMonitor:
    """The health task of one fleet (see the module docs); ``start`` once, ``stop`` once."""

    def __init__(
        self,
        router: Router,
        config: HealthConfig,
        client: httpx.AsyncClient,
        shared: SharedEjections | None,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._router = router
        self._config = config
        self._client = client
        self._shared = shared
        self._rng = rng
        self._clock = clock
        self._owner = uuid.uuid4().hex[:16]
        self._targets = [
            _Target(d, probe, probe_url(d, probe), 0.0)
            for d in router.deployments.values()
            if (probe := d.config.probe) is not None
        ]
        # To share: (deployment id, seconds ejected), or seconds None: back (probed up).
        self._pending: list[tuple[str, float | None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        router.health.on_eject = self._ejected

    @property
    def targets(self) -> list[str]:
        """Ids of the deployments probed."""
        return [t.deployment.id for t in self._targets]

    def start(self) -> None:
        now = self._clock()
        for target in self._targets:
            target.due = now + self._rng.uniform(0, target.probe.interval_s)
        self._task = asyncio.create_task(self._run(), name="aigw-health")

    async def stop(self) -> None:
        if self._router.health.on_eject == self._ejected:
            self._router.health.on_eject = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _ejected(self, deployment_id: str, seconds: float) -> None:
        if self._shared is not None:
            self._pending.append((deployment_id, seconds))
            self._wake.set()

    async def _run(self) -> None:
        sync_due = self._clock()
        while True:
            try:
                now = self._clock()
                due = [t for t in self._targets if t.due <= now]
                if due:
                    await asyncio.gather(*(self.probe_once(t) for t in due))
                    for t in due:
                        t.due = now + t.probe.interval_s * self._rng.uniform(0.9, 1.1)
                if self._clock() >= sync_due:
                    await self.sync()
                    sync_due = self._clock() + self._config.sync_interval_s
                await self._publish()
            except Exception:  # a background loop logs and goes on
                log.exception("unexpected error in the health task")
                sync_due = self._clock() + self._config.sync_interval_s
            wake_at = min([sync_due, *(t.due for t in self._targets)])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - self._clock())):
                    await self._wake.wait()

    async def probe_once(self, target: _Target) -> bool | None:
        """Probe one deployment and count the result; the new verdict when it changed."""
        probe = target.probe
        try:
            response = await self._client.get(target.url, timeout=probe.timeout_s)
            ok = response.is_success
        except httpx.HTTPError as exc:
            log.debug("probe of %s failed: %s", target.deployment.id, exc)
            ok = False
        deployment = target.deployment
        changed = record_probe(deployment.state, ok, probe, self._clock())
        if changed and self._shared is not None:
            # Back: no instance should go on applying an ejection shared before this.
            self._pending.append((deployment.id, None))
        if changed is not None:
            log.warning(
                "deployment %s is %s (active probe %s)",
                deployment.id,
                "up" if changed else "down",
                target.url,
            )
        if deployment.state.probe_up is False:
            # Shared while it stays down, for a little over one probe interval at a time.
            self._ejected(deployment.id, probe.interval_s + probe.timeout_s)
        return changed

    async def sync(self) -> None:
        """Recompute demotion, and apply the ejections other instances shared."""
        for route in self._router.models.values():
            demote(route.deployments, self._config.demotion)
        if self._shared is None:
            return
        deployments = self._router.deployments
        left = await self._shared.ejections(list(deployments), self._owner)
        now = self._clock()
        detector = self._router.health
        for deployment_id, seconds in left.items():
            deployment = deployments[deployment_id]
            detector.apply_shared(deployment, seconds, now)

    async def _publish(self) -> None:
        pending, self._pending = self._pending, []
        if self._shared is None:
            return
        for deployment_id, seconds in pending:
            if seconds is None:
                await self._shared.clear(deployment_id)
            else:
                await self._shared.eject(deployment_id, seconds, self._owner)
