"""The fake-backend command-line flags and the validation of settings."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from aigw.sim.server import BackendSettings, Faults, add_arguments, settings_from_args
from aigw.sim.settings import faults_with


def parse(*argv: str) -> BackendSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(argv))


def test_no_flags_give_the_default_settings() -> None:
    assert parse() == BackendSettings()


def test_every_flag_reaches_its_field() -> None:
    settings = parse(
        "--model",
        "x",
        "--profile",
        "l4",
        "--max-num-seqs",
        "3",
        "--num-gpu-blocks",
        "99",
        "--max-model-len",
        "2048",
        "--time-scale",
        "0.5",
        "--seed",
        "7",
        "--api-key",
        "k",
        "--scrape-delay",
        "0.25",
        "--error-rate",
        "0.1",
        "--error-status",
        "503",
        "--hang-rate",
        "0.2",
        "--die-mid-stream-rate",
        "0.3",
        "--die-after-tokens",
        "5",
        "--slow-start",
        "4",
        "--slowdown",
        "2.5",
    )
    assert settings == BackendSettings(
        model="x",
        profile="l4",
        max_num_seqs=3,
        num_gpu_blocks=99,
        max_model_len=2048,
        time_scale=0.5,
        seed=7,
        api_key="k",
        scrape_delay=0.25,
        faults=Faults(0.1, 503, 0.2, 0.3, 5, 4.0, 2.5),
    )


def test_unknown_profile_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parse("--profile", "tpu")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Faults(error_rate=1.5),
        lambda: Faults(error_status=200),
        lambda: Faults(slowdown=0),
        lambda: BackendSettings(profile="nope"),
        lambda: BackendSettings(max_num_seqs=0),
        lambda: BackendSettings(time_scale=-1),
    ],
)
def test_out_of_range_values_raise_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_faults_with_checks_names_and_types() -> None:
    assert faults_with(Faults(), {"slowdown": 3}).slowdown == 3.0
    with pytest.raises(ValueError, match="unknown fault"):
        faults_with(Faults(), {"typo": 1})
    with pytest.raises(ValueError, match="integer"):
        faults_with(Faults(), {"error_status": 500.5})
    with pytest.raises(ValueError, match="number"):
        faults_with(Faults(), {"error_rate": "high"})
