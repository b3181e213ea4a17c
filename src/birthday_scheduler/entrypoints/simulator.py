"""`birthday-scheduler message-service`: the external message service's simulator, alone."""

from __future__ import annotations

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.settings import Settings
from birthday_scheduler.simulator.app import SimulatorConfig, run_simulator


async def main(_settings: Settings, host: str, port: int) -> None:
    config = SimulatorConfig.from_env()
    stop = runtime.stop_on_signals()
    await run_simulator(host, port, config, stop)
