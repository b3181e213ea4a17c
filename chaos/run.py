"""One chaos run, start to verdict: processes up, users made due, faults, drain, check."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from chaos import services
from chaos.check import Expectation, Verdict, judge
from chaos.cluster import Cluster, Member, free_port
from chaos.observe import Api, Gone, Ledger
from chaos.population import PlannedUser, next_minute, plan_patch, plan_users
from chaos.profile import WAVE_GAP_S, Fault, Profile, fault_plan

SCHEDULERS = WORKERS = 2
CREATE_CONCURRENCY = 16
# Users are created at no less than this rate (measured 50-80 a second on a busy two-core
# machine); a wave must exist before its instant.
CREATE_RATE_FLOOR = 40.0
# A kill waits at most this long for every replica of its role to be ready.
KILL_WAIT_S = 30.0
# PATCHes go out this long after a wave's instant, while its messages are in flight.
PATCH_DELAY_S = 1.5


class SetupFailed(Exception):
    pass


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    patch_kinds: Counter[str] = field(default_factory=Counter)
    patch_statuses: Counter[int] = field(default_factory=Counter)
    outage_s: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    suspects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())


def say(started: float, text: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - started:7.1f}s] {text}\n")
    sys.stderr.flush()


async def _until(moment: datetime) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


async def _poll(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SetupFailed(f"{what} not within {within:.0f}s")
        await asyncio.sleep(0.2)


@dataclass
class Chaos:
    profile: Profile
    seed: int
    cluster: Cluster
    database_url: str
    started: float
    whole_rabbitmq_node: bool = False
    rng: random.Random = field(init=False)
    report: Report = field(default_factory=Report)
    expectations: dict[str, Expectation] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    _restarting: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - fault injection, not crypto

    def say(self, text: str) -> None:
        say(self.started, text)

    # --- set-up ------------------------------------------------------------------------------

    async def start_processes(self, api: Api) -> tuple[str, str]:
        sim_port, api_port = free_port(), free_port()
        simulator = self.cluster.add(
            "simulator", 0, HOST="127.0.0.1", PORT=str(sim_port),
            SIMULATOR_LATENCY_MS=self.profile.simulator_latency_ms,
            SIMULATOR_SEED=str(self.seed),
        )  # fmt: skip
        sim_base = f"http://127.0.0.1:{sim_port}"
        self.cluster.start(simulator)
        await _poll(lambda: api.ready(sim_base, "/health"), 30, "simulator")
        env = {"MESSAGE_SERVICE_URL": f"{sim_base}/send"}
        members = [self.cluster.add("api", 0, PORT=str(api_port), DATABASE_POOL_MAX="5", **env)]
        for slot in range(SCHEDULERS):
            members.append(
                self.cluster.add(
                    "scheduler", slot, METRICS_PORT=str(free_port()), DATABASE_POOL_MAX="5", **env
                )
            )
        for slot in range(WORKERS):
            members.append(
                self.cluster.add(
                    "worker", slot, METRICS_PORT=str(free_port()), DATABASE_POOL_MAX="10",
                    WORKER_CONCURRENCY=str(self.profile.worker_concurrency), **env,
                )
            )  # fmt: skip
        for member in members:
            self.cluster.start(member)
        api_base = f"http://127.0.0.1:{api_port}"
        for member in members:
            await _poll(_ready(api, member.ops_base), 60, f"{member.name} /ready")
        return api_base, sim_base

    def plan_population(self) -> list[PlannedUser]:
        """The users of every wave; the first wave's instant is the first whole minute its
        users can surely be created before."""
        profile = self.profile
        setup = profile.per_wave / CREATE_RATE_FLOOR + 5
        first = next_minute(datetime.now(UTC), timedelta(seconds=setup))
        waves = [first + timedelta(seconds=WAVE_GAP_S * k) for k in range(profile.waves)]
        tag = f"{self.seed:x}"[-8:]
        at = ", ".join(w.strftime("%H:%M:%SZ") for w in waves)
        self.say(f"{profile.messages} users due at {at}, {profile.per_wave} at each")
        return plan_users(waves, [profile.per_wave] * profile.waves, tag, self.rng)

    async def create_wave(self, api: Api, ledger: Ledger, wave: list[PlannedUser]) -> None:
        """POST the wave's users, each of which must be planned at the wave's instant."""
        began = time.monotonic()
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)
        elsewhere = 0

        async def create(user: PlannedUser) -> None:
            nonlocal elsewhere
            async with gate:
                created = await api.create(user.body())
            if created is not None and _instant(created["nextMessageAt"]) != user.instant:
                elsewhere += 1
            self.expectations[user.email] = Expectation(user.email, frozenset({user.instant}))

        await asyncio.gather(*(create(user) for user in wave))
        number, instant = wave[0].wave, wave[0].instant
        if datetime.now(UTC) > instant - timedelta(seconds=1):
            raise SetupFailed(f"wave {number} was not created before its instant")
        if elsewhere:
            raise SetupFailed(f"{elsewhere} users of wave {number} were planned elsewhere")
        self.ids.update(await ledger.user_ids([u.email for u in wave]))
        self.say(f"created wave {number}: {len(wave)} users in {time.monotonic() - began:.1f}s")

    async def create_waves(self, api: Api, ledger: Ledger, waves: list[list[PlannedUser]]) -> None:
        for wave in waves:
            await self.create_wave(api, ledger, wave)

    # --- faults ------------------------------------------------------------------------------

    async def run_faults(self, api: Api, first: datetime, plan: list[Fault]) -> None:
        for fault in plan:
            await _until(first + timedelta(seconds=fault.at_s))
            if fault.action in ("kill_worker", "kill_scheduler"):
                await self._kill(api, fault.action.removeprefix("kill_"), fault)
                continue
            self.say(f"{fault.action} ...")
            if fault.action == "restart_rabbitmq":
                took = await asyncio.to_thread(services.restart_rabbitmq, self.whole_rabbitmq_node)
            else:
                took = await asyncio.to_thread(services.restart_postgres)
            self.report.faults[fault.action] += 1
            self.report.outage_s.setdefault(fault.action, []).append(round(took, 1))
            self.say(f"{fault.action} done in {took:.1f}s")

    async def _kill(self, api: Api, role: str, fault: Fault) -> None:
        """SIGKILL one replica of `role` once every replica of it is up and ready: one replica
        down at a time, as a rolling failure in production, not the whole role at once."""
        members = self.cluster.of_role(role)

        async def all_ready() -> bool:
            ready = [m.alive() and await api.ready(m.ops_base) for m in members]
            return all(ready)

        try:
            await _poll(all_ready, KILL_WAIT_S, f"{role}s ready")
        except SetupFailed:
            self.report.notes.append(f"{fault.action} at {fault.at_s:.0f}s skipped: {role} not up")
            return
        victim = self.rng.choice(members)
        if self.cluster.kill(victim):
            self.report.faults[fault.action] += 1
            self.say(f"SIGKILL {victim.name}, back in {fault.down_s:.1f}s")
            task = asyncio.create_task(self._restart_later(victim, fault.down_s))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    async def _restart_later(self, member: Member, delay: float) -> None:
        await asyncio.sleep(delay)
        self.cluster.start(member)

    async def supervise(self) -> None:
        while True:
            for name, uptime in self.cluster.supervise():
                self.say(f"{name} exited by itself after {uptime:.0f}s; started again")
            await asyncio.sleep(1)

    async def progress(self, ledger: Ledger) -> None:
        while True:
            await asyncio.sleep(10)
            try:
                self.say(f"ledger {dict(sorted((await ledger.statuses()).items()))}")
            except Gone:
                self.say("ledger unreadable")

    # --- in-flight edits ---------------------------------------------------------------------

    async def patch_wave(
        self, api: Api, ledger: Ledger, wave: list[PlannedUser], later: datetime | None
    ) -> None:
        await _until(wave[0].instant + timedelta(seconds=PATCH_DELAY_S))
        flying = await ledger.in_flight([u.email for u in wave])
        candidates = [u for u in wave if u.email in flying]
        chosen = self.rng.sample(
            candidates, min(len(candidates), round(len(wave) * self.profile.patch_share))
        )
        patches = [(u, plan_patch(u, later, self.rng, self.profile.patch_weights)) for u in chosen]
        self.say(
            f"PATCH {len(patches)} of {len(candidates)} in-flight users of wave {wave[0].wave}"
        )

        async def send(user: PlannedUser, patch: Any) -> None:
            expected = self.expectations[user.email]
            if patch.new_instant is not None:
                expected = Expectation(
                    user.email, expected.instants | {patch.new_instant}, expected.must_send
                )
            if patch.kind == "birthday":
                expected = Expectation(user.email, expected.instants, must_send=False)
            self.expectations[user.email] = expected
            self.report.faults["patch_in_flight"] += 1
            self.report.patch_kinds[patch.kind] += 1
            try:
                status = await api.patch(self.ids[user.email], patch.body)
            except Gone:
                status = 0
            self.report.patch_statuses[status] += 1

        await asyncio.gather(*(send(u, p) for u, p in patches))

    # --- the whole run -----------------------------------------------------------------------

    async def drive(self) -> Verdict:
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            api = Api(http, "")
            api_base, sim_base = await self.start_processes(api)
            api = Api(http, api_base)
            ledger = Ledger(self.database_url)
            self.say("processes ready: api, 2 schedulers, 2 workers, message-service")
            users = self.plan_population()
            by_wave = [[u for u in users if u.wave == k] for k in range(self.profile.waves)]
            waves = [wave[0].instant for wave in by_wave]
            # The first wave before anything starts; the others while the faults run.
            await self.create_wave(api, ledger, by_wave[0])
            plan = fault_plan(self.profile, self.rng)
            background = [
                asyncio.create_task(self.supervise()),
                asyncio.create_task(self.progress(ledger)),
            ]
            try:
                await asyncio.gather(
                    self.create_waves(api, ledger, by_wave[1:]),
                    self.run_faults(api, waves[0], plan),
                    *(
                        self.patch_wave(
                            api, ledger, wave, waves[k + 1] if k + 1 < len(waves) else None
                        )
                        for k, wave in enumerate(by_wave)
                    ),
                )
                await asyncio.gather(*self._restarting)
                self.say(f"faults over ({self.report.fault_count}); draining")
                await self.drain(ledger, waves[-1])
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
            return await self.verdict(api, ledger, sim_base)

    async def drain(self, ledger: Ledger, last: datetime) -> None:
        deadline = time.monotonic() + self.profile.drain_s
        while True:
            self.cluster.supervise()
            left = await ledger.unfinished(last)
            if left == 0:
                self.say("every occasion finished")
                return
            if time.monotonic() > deadline:
                waited = self.profile.drain_s
                self.report.notes.append(f"{left} occasions unfinished {waited:.0f}s after faults")
                self.say(self.report.notes[-1])
                return
            await asyncio.sleep(1)

    async def verdict(self, api: Api, ledger: Ledger, sim_base: str) -> Verdict:
        deliveries = await api.deliveries(sim_base)
        self.report.stats = await api.simulator_stats(sim_base)
        if self.report.stats.get("accepted", 0) > len(deliveries):
            raise SetupFailed(
                f"the simulator kept {len(deliveries)} of {self.report.stats['accepted']} "
                "accepted deliveries: raise SIMULATOR_MAX_DELIVERIES"
            )
        verdict = judge(
            list(self.expectations.values()), await ledger.rows(), await ledger.plans(), deliveries
        )
        suspects = verdict.lost_keys + [k for keys in verdict.duplicate_keys for k in keys]
        suspects += [key for _, key in verdict.latest]
        if suspects:
            self.report.suspects = await ledger.describe(suspects[:20])
        return verdict


def _ready(api: Api, base: str) -> Callable[[], Awaitable[bool]]:
    return lambda: api.ready(base)


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
