from __future__ import annotations

import pytest

from birthday_scheduler.errors import ConfigurationError
from birthday_scheduler.simulator.config import Fault, SimulatorConfig


def test_from_env_reads_every_variable() -> None:
    config = SimulatorConfig.from_env(
        {
            "SIMULATOR_FAILURE_RATE_500": "0.1",
            "SIMULATOR_FAILURE_RATE_502": "0.05",
            "SIMULATOR_FAILURE_RATE_429": "0.02",
            "SIMULATOR_HANG_RATE": "0.01",
            "SIMULATOR_ACCEPT_THEN_HANG_RATE": "0.01",
            "SIMULATOR_LATENCY_MS": "20-200",
            "SIMULATOR_OUTAGES": "30-60, 120-180",
            "SIMULATOR_SEED": "42",
            "SIMULATOR_HANG_S": "5",
            "SIMULATOR_MAX_DELIVERIES": "250000",
        }
    )
    assert config == SimulatorConfig(
        failure_rate_500=0.1,
        failure_rate_502=0.05,
        failure_rate_429=0.02,
        hang_rate=0.01,
        accept_then_hang_rate=0.01,
        latency_ms=20.0,
        latency_max_ms=200.0,
        outages=((30.0, 60.0), (120.0, 180.0)),
        seed=42,
        hang_s=5.0,
        max_deliveries=250_000,
    )


def test_from_env_defaults_to_a_well_behaved_service() -> None:
    assert SimulatorConfig.from_env({}) == SimulatorConfig()
    assert SimulatorConfig.from_env({"SIMULATOR_LATENCY_MS": "50"}).latency_max_ms is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIMULATOR_FAILURE_RATE_500", "lots"),
        ("SIMULATOR_FAILURE_RATE_500", "1.5"),
        ("SIMULATOR_SEED", "abc"),
        ("SIMULATOR_OUTAGES", "30"),
        ("SIMULATOR_OUTAGES", "60-30"),
        ("SIMULATOR_LATENCY_MS", "200-20"),
        ("SIMULATOR_HANG_S", "0"),
        ("SIMULATOR_MAX_DELIVERIES", "0"),
        ("SIMULATOR_MAX_DELIVERIES", "1e6"),
    ],
)
def test_from_env_names_the_bad_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match="SIMULATOR_"):
        SimulatorConfig.from_env({variable: value})


def test_rates_must_not_add_up_to_more_than_one() -> None:
    with pytest.raises(ValueError, match="together"):
        SimulatorConfig(failure_rate_500=0.6, hang_rate=0.6)


def test_pick_fault_walks_the_cumulative_rates() -> None:
    config = SimulatorConfig(
        failure_rate_500=0.1,
        failure_rate_502=0.1,
        failure_rate_429=0.1,
        hang_rate=0.1,
        accept_then_hang_rate=0.1,
    )
    draws = [0.0, 0.15, 0.25, 0.35, 0.45, 0.5, 0.99]
    assert [config.pick_fault(d) for d in draws] == [
        Fault.HTTP_500,
        Fault.HTTP_502,
        Fault.HTTP_429,
        Fault.HANG,
        Fault.ACCEPT_THEN_HANG,
        Fault.NONE,
        Fault.NONE,
    ]


def test_outage_windows_are_half_open_intervals() -> None:
    config = SimulatorConfig(outages=((10.0, 20.0),))
    assert [config.in_outage(t) for t in (9.9, 10.0, 19.9, 20.0)] == [False, True, True, False]


def test_updated_applies_a_json_subset_and_rejects_the_rest() -> None:
    config = SimulatorConfig().updated({"outages": [[0, 5]], "seed": 3, "failure_rate_500": 1})
    assert (config.outages, config.seed, config.failure_rate_500) == (((0.0, 5.0),), 3, 1.0)
    for bad in ({"nope": 1}, {"seed": "x"}, {"hang_rate": True}, {"outages": [[1]]}):
        with pytest.raises(ValueError, match=r"\w"):
            config.updated(bad)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10"])
def test_max_deliveries_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match="max_deliveries"):
        SimulatorConfig().updated({"max_deliveries": value})
