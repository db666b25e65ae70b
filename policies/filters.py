"""Model-aware filters: which deployments *can* serve a request at all.

The router applies :data:`MODEL_AWARE_FILTERS` in order, before any policy runs; when one of
them leaves nothing, the request fails with that filter's :meth:`reason`. Each filter is
stateless and immutable, so one shared tuple serves every model. Client-caused mismatches
come first (context, adapter, region, tags) so that their reason is the one reported, and
``draining`` last: a draining fleet is the operator's doing, not the client's.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.base import Filter
from aigw.types import RouteContext

__all__ = [
    "FILTERS",
    "MODEL_AWARE_FILTERS",
    "AdapterFilter",
    "ContextWindowFilter",
    "NotDrainingFilter",
    "RegionFilter",
    "TagsFilter",
]


class ContextWindowFilter:
    """Keeps deployments whose ``context_window`` (when set) holds the prompt plus the
    requested output. Signal: ``ctx.prompt_tokens + (ctx.max_tokens or 0)``."""

    __slots__ = ()
    name = "context_window"
    client_fault = True

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]:
        needed = ctx.prompt_tokens + (ctx.max_tokens or 0)
        return [
            d
            for d in candidates
            if d.config.context_window is None or needed <= d.config.context_window
        ]

    def reason(self, ctx: RouteContext) -> str:
        needed = ctx.prompt_tokens + (ctx.max_tokens or 0)
        return (
            f"the request needs {needed} tokens of context ({ctx.prompt_tokens} prompt + "
            f"{ctx.max_tokens or 0} max_tokens) but no deployment of model {ctx.model!r} "
            "has a context window that large"
        )


class AdapterFilter:
    """Keeps deployments that have the request's LoRA adapter: reported loaded by the engine's
    last scrape (``state.engine.adapters``) or declared in ``lora_adapters`` (loadable on
    demand). Signal: ``ctx.adapter``. A stale snapshot still counts: adapters stay loaded."""

    __slots__ = ()
    name = "adapter"
    client_fault = True

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]:
        adapter = ctx.adapter
        if adapter is None:
            return list(candidates)
        kept = []
        for d in candidates:
            engine = d.state.engine
            if (
                engine is not None and adapter in engine.adapters
            ) or adapter in d.config.lora_adapters:
                kept.append(d)
        return kept

    def reason(self, ctx: RouteContext) -> str:
        return (
            f"no deployment of model {ctx.model!r} has LoRA adapter {ctx.adapter!r} loaded "
            "or listed in its lora_adapters"
        )


class RegionFilter:
    """Keeps deployments in the requested region. Signal: ``ctx.region``
    (the ``x-aigw-region`` header); deployments without a region never match one."""

    __slots__ = ()
    name = "region"
    client_fault = True

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]:
        region = ctx.region
        if region is None:
            return list(candidates)
        return [d for d in candidates if d.config.region == region]

    def reason(self, ctx: RouteContext) -> str:
        return f"no deployment of model {ctx.model!r} is in region {ctx.region!r} (x-aigw-region)"


class TagsFilter:
    """Keeps deployments carrying every requested tag. Signal: ``ctx.tags``
    (the ``x-aigw-tags`` header) must be a subset of the deployment's ``tags``."""

    __slots__ = ()
    name = "tags"
    client_fault = True

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]:
        tags = ctx.tags
        if not tags:
            return list(candidates)
        return [d for d in candidates if tags.issubset(d.config.tags)]

    def reason(self, ctx: RouteContext) -> str:
        wanted = ", ".join(sorted(ctx.tags))
        return f"no deployment of model {ctx.model!r} has all of the tags {wanted} (x-aigw-tags)"


class NotDrainingFilter:
    """Drops deployments being drained by the operator. Signal: ``state.draining``."""

    __slots__ = ()
    name = "draining"
    client_fault = False

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]:
        return [d for d in candidates if not d.state.draining]

    def reason(self, ctx: RouteContext) -> str:
        return f"every deployment of model {ctx.model!r} is draining"


# name -> filter; filters are immutable and stateless, so instances are shared.
FILTERS: dict[str, Filter] = {
    f.name: f
    for f in (
        ContextWindowFilter(),
        AdapterFilter(),
        RegionFilter(),
        TagsFilter(),
        NotDrainingFilter(),
    )
}

MODEL_AWARE_FILTERS: tuple[Filter, ...] = tuple(FILTERS.values())
