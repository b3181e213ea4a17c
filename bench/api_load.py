"""The API under wrk (-t1 -c64): POST /users, GET /users/{id}, GET /alive.

Each endpoint is loaded on the real API process (`birthday-scheduler api`: API_TOKENS set,
metrics on, rate limit off so the load is not answered 429) and on the bare ASGI app
(bench/bare_app.py) over the same database, one after the other, each after a warm-up run.
wrk's own latency histogram gives the percentiles: a `done` hook prints them as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench import seed
from bench.context import Context
from bench.results import Result
from bench.services import amqp_url, database_url, free_port

WRK = shutil.which("wrk") or "/usr/bin/wrk"
CONNECTIONS = 64

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_POST = """
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  local body = string.format(
    '{{"firstName":"Bench","lastName":"Load","email":"{prefix}-%d@example.com",' ..
    '"dateOfBirth":"1990-07-01","timezoneOffset":60}}', counter)
  return wrk.format(nil, "/users", nil, body)
end
"""

_GET = """
local ids = {{}}
for line in io.lines("{ids}") do ids[#ids + 1] = line end
math.randomseed(12345)
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)])
end
"""


@dataclass(frozen=True)
class Load:
    rps: float  # successful (2xx/3xx) responses per second
    p99_ms: float
    requests: int
    errors: str  # by kind, e.g. "0" or "3 status, 2 timeout"


def _script(ctx: Context, name: str, text: str) -> Path:
    path = ctx.workdir / f"{name}.lua"
    path.write_text(text + _DONE)
    return path


def wrk(base: str, path: str, seconds: float, script: Path) -> Load:
    # --timeout: a slow answer is counted in the latency histogram; wrk's default (2 s) would
    # drop it from the percentiles as a timeout and flatter the p99.
    argv = [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    argv.append("--latency")
    argv += ["-s", str(script)]
    done = subprocess.run(
        [*argv, base + path], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()[-300:]}")
    line = next(
        (ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")),
        None,
    )
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-300:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    kinds = [f"{data[k]} {k}" for k in ("connect", "read", "write", "status", "timeout") if data[k]]
    errors = ", ".join(kinds) or "0"
    good = data["requests"] - data["status"]
    return Load(
        rps=good / (data["duration_us"] / 1e6),
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        errors=errors,
    )


async def run(ctx: Context) -> dict[str, Result]:
    p = ctx.profile
    name = await ctx.scope.database(ctx.code)
    url = database_url(name)
    await seed.load_spread(url, p.api_users, 0)
    ids_file = ctx.workdir / "user_ids.txt"
    ids_file.write_text("\n".join(await seed.user_ids(url)) + "\n")
    vhost = ctx.scope.vhost()

    api_port, bare_port = free_port(), free_port()
    api = ctx.services.start(
        "api", ["api"], "/alive", api_port,
        DATABASE_URL=url, RABBITMQ_URL=amqp_url(vhost), API_TOKENS=ctx.token,
        PORT=str(api_port), RATE_LIMIT_PER_MINUTE="0",
    )  # fmt: skip
    bare = ctx.services.start_raw(
        "bare_app",
        [
            sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1",
            "--port", str(bare_port), "--no-access-log", "--log-level", "warning",
        ],
        f"http://127.0.0.1:{bare_port}/alive",
        DATABASE_URL=url, API_TOKENS=ctx.token,
    )  # fmt: skip
    try:
        api.wait_ready()
        bare.wait_ready()
        bases = {
            "bare": f"http://127.0.0.1:{bare_port}",
            "api": f"http://127.0.0.1:{api_port}",
        }
        get = _script(ctx, "get", _GET.format(ids=ids_file, token=ctx.token))
        alive = _script(ctx, "alive", "")
        loads: dict[tuple[str, str], Load] = {}
        warm = max(1.0, p.api_seconds / 5)
        for endpoint, path in (("post", "/users"), ("get", "/users"), ("alive", "/alive")):
            for who, base in bases.items():
                if endpoint == "post":  # a fresh email prefix per wrk run
                    warm_script, script = _post_script(ctx, f"{who}-warm"), _post_script(ctx, who)
                else:
                    warm_script = script = get if endpoint == "get" else alive
                wrk(base, path, warm, warm_script)
                loads[(endpoint, who)] = wrk(base, path, p.api_seconds, script)
    finally:
        ctx.services.stop(api)
        bare.stop()

    def detail(endpoint: str) -> str:
        a, b = loads[(endpoint, "api")], loads[(endpoint, "bare")]
        return (
            f"{a.requests} requests, errors: {a.errors} (bare: {b.requests}, errors: {b.errors}); "
            f"p99 bare {b.p99_ms:.1f} ms"
        )

    def rps(key: str, endpoint: str) -> Result:
        return Result(
            key, loads[(endpoint, "api")].rps, "req/s", loads[(endpoint, "bare")].rps,
            detail(endpoint),
        )  # fmt: skip

    def p99(key: str, endpoint: str) -> Result:
        return Result(
            key, loads[(endpoint, "api")].p99_ms, "ms", loads[(endpoint, "bare")].p99_ms,
            detail(endpoint),
        )  # fmt: skip

    return {
        "api_post_users_rps": rps("api_post_users_rps", "post"),
        "api_post_users_p99_ms": p99("api_post_users_p99_ms", "post"),
        "api_get_user_rps": rps("api_get_user_rps", "get"),
        "api_get_user_p99_ms": p99("api_get_user_p99_ms", "get"),
        "api_alive_rps": rps("api_alive_rps", "alive"),
    }


def _post_script(ctx: Context, who: str) -> Path:
    # A fresh prefix per run: every email is unique across both apps and the warm-ups.
    prefix = f"{who}-{uuid.uuid4().hex[:8]}"
    return _script(ctx, f"post-{who}", _POST.format(token=ctx.token, prefix=prefix))
