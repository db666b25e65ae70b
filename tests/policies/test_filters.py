from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aigw.policies.filters import (
    FILTERS,
    MODEL_AWARE_FILTERS,
    AdapterFilter,
    ContextWindowFilter,
    NotDrainingFilter,
    RegionFilter,
    TagsFilter,
)
from tests.policies.conftest import cloud, fleet, gpu, request, scrape
from tests.policies.strategies import fleets, requests


def ids(deployments: list) -> list[str]:  # type: ignore[type-arg]
    return [d.id for d in deployments]


def test_context_window_keeps_deployments_that_fit_prompt_plus_max_tokens() -> None:
    _, deps = fleet(gpu("small", context_window=1000), gpu("big", context_window=4000), gpu("any"))
    keep = ContextWindowFilter()
    assert ids(keep(deps, request(prompt_tokens=900, max_tokens=200))) == ["big", "any"]
    assert ids(keep(deps, request(prompt_tokens=800, max_tokens=200))) == ["small", "big", "any"]
    # without max_tokens only the prompt has to fit
    assert ids(keep(deps, request(prompt_tokens=1000))) == ["small", "big", "any"]


def test_context_window_reason_names_the_tokens_needed() -> None:
    reason = ContextWindowFilter().reason(request(prompt_tokens=5000, max_tokens=100))
    assert "5100" in reason and "'m'" in reason


def test_adapter_loaded_on_engine_or_declared_in_config() -> None:
    _, deps = fleet(gpu("loaded"), gpu("declared", lora_adapters=["sql"]), gpu("neither"))
    scrape(deps[0], adapters=frozenset({"sql"}))
    scrape(deps[2], adapters=frozenset({"chat"}))
    keep = AdapterFilter()
    assert ids(keep(deps, request(adapter="sql"))) == ["loaded", "declared"]
    assert ids(keep(deps, request(adapter="chat"))) == ["neither"]
    assert ids(keep(deps, request())) == ["loaded", "declared", "neither"]
    assert keep(deps, request(adapter="poetry")) == []
    assert "'poetry'" in keep.reason(request(adapter="poetry"))


def test_adapter_of_a_stale_snapshot_still_counts() -> None:
    _, deps = fleet(gpu("a"))
    scrape(deps[0], adapters=frozenset({"sql"}))
    deps[0].state.engine_stale = True
    assert ids(AdapterFilter()(deps, request(adapter="sql"))) == ["a"]


def test_region_must_match_when_requested() -> None:
    _, deps = fleet(gpu("eu", region="eu-west"), cloud("us", region="us-east"), gpu("nowhere"))
    keep = RegionFilter()
    assert ids(keep(deps, request(region="eu-west"))) == ["eu"]
    assert ids(keep(deps, request())) == ["eu", "us", "nowhere"]
    assert keep(deps, request(region="ap-south")) == []
    assert "'ap-south'" in keep.reason(request(region="ap-south"))


def test_tags_must_all_be_present() -> None:
    _, deps = fleet(gpu("a", tags=["h100", "fast"]), gpu("b", tags=["fast"]), gpu("c"))
    keep = TagsFilter()
    assert ids(keep(deps, request(tags=frozenset({"fast"})))) == ["a", "b"]
    assert ids(keep(deps, request(tags=frozenset({"fast", "h100"})))) == ["a"]
    assert ids(keep(deps, request())) == ["a", "b", "c"]
    reason = keep.reason(request(tags=frozenset({"tpu", "fast"})))
    assert "fast, tpu" in reason


def test_draining_deployments_are_dropped() -> None:
    _, deps = fleet(gpu("a"), gpu("b"))
    deps[0].state.draining = True
    assert ids(NotDrainingFilter()(deps, request())) == ["b"]
    deps[1].state.draining = True
    assert NotDrainingFilter()(deps, request()) == []


def test_model_aware_filters_table() -> None:
    names = [f.name for f in MODEL_AWARE_FILTERS]
    assert names == ["context_window", "adapter", "region", "tags", "draining"]
    assert set(FILTERS) == set(names)
    for f in MODEL_AWARE_FILTERS:
        assert f.reason(request(adapter="x", region="r", tags=frozenset({"t"})))


@given(fleets(), requests(), st.sampled_from(MODEL_AWARE_FILTERS))
def test_every_filter_returns_an_ordered_subset(fleet_and_model, ctx, keep) -> None:  # type: ignore[no-untyped-def]
    _, deps = fleet_and_model
    kept = keep(deps, ctx)
    positions = [deps.index(d) for d in kept]
    assert positions == sorted(set(positions))
