"""API fuzzing: schemathesis generates requests from the served OpenAPI document of /users*.

The API runs as it does in production (uvicorn on a loopback port, its own event loop, real
PostgreSQL); each generated case, valid or deliberately invalid, must get a documented status
code, a body that matches the documented schema, never a 5xx, and every 4xx must be
application/problem+json.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.settings import Settings
from support import FakeClock, free_port, user_body, wait_for

CASES_PER_RUN = 70  # per operation and generation mode, and for ids that exist and do not
CHECKS = [
    not_a_server_error,
    negative_data_rejection,  # what the schema calls invalid is refused, never stored
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def served_api(pg_database_url: str) -> Iterator[str]:
    """The app served by uvicorn on its own thread and loop, as `birthday-scheduler api` does."""
    port = free_port()
    settings = Settings(database_url=pg_database_url, rate_limit_per_minute=0, port=port)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with runtime.open_resources(settings, broker=MemoryBroker(), clock=FakeClock()) as r:
            app = create_app(runtime.api_context(r))
            await runtime.serve_http(app, settings.host, port, stop, grace_s=1)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base_url}/alive", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, "the API to listen", within=30)
        yield base_url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


def _assert_problem_on_4xx(response: schemathesis.Response) -> None:
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), (
            response.status_code,
            response.text,
        )
        body = response.json()
        assert body["status"] == response.status_code
        assert "Traceback" not in response.text


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    session: requests.Session,
    base_url: str,
    statuses: Counter[str],
    **fixed: Any,
) -> None:
    @settings(
        max_examples=CASES_PER_RUN,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure here is a defect, not luck
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        case.validate_response(response, checks=CHECKS)
        _assert_problem_on_4xx(response)
        statuses[f"{operation.label} {response.status_code}"] += 1

    run()


def _valid_bodies(partial: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies the API should accept (schemathesis's own mostly miss the cross-field rules),
    with emails from a small pool so that conflicts (409) come up too."""
    name = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=100).filter(
        str.strip
    )
    day = st.dates(date(1900, 1, 1), date(2026, 6, 1))
    fields = {
        "firstName": name,
        "lastName": name,
        # Mostly fresh (made unique when sent), sometimes one already taken in another case.
        "email": st.sampled_from(
            [UNIQUE, UNIQUE, UNIQUE, "Fuzz.0@Example.com", "fuzz.0@EXAMPLE.com"]
        ),
        "dateOfBirth": st.one_of(
            day.map(date.isoformat),
            st.builds(lambda d, t: f"{d.isoformat()}T{t}", day, st.sampled_from(TIMES)),
        ),
    }
    zone = st.one_of(
        st.integers(-720, 840).map(lambda minutes: {"timezoneOffset": minutes}),
        st.sampled_from(["+05:30", "-03:00", "+14:00", "-12:00", "+00:00"]).map(
            lambda offset: {"timezoneOffset": offset}
        ),
        st.sampled_from(ZONES).map(lambda zone: {"timezone": zone}),
    )
    if partial:
        some = st.fixed_dictionaries({}, optional=fields).filter(bool)
        return st.one_of(some, st.builds(lambda a, b: a | b, some, zone), zone)
    return st.builds(lambda a, b: a | b, st.fixed_dictionaries(fields), zone)


UNIQUE = "<unique>"
TIMES = ["00:00:00Z", "23:59:59+14:00", "12:00:00.5-12:00", "09:00:00"]
ZONES = sorted(zoneinfo.available_timezones() - {"Factory", "localtime"})


def _fuzz_valid(
    operation: Any, session: requests.Session, base_url: str, statuses: Counter[str], **fixed: Any
) -> None:
    @settings(
        max_examples=CASES_PER_RUN,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=_valid_bodies(partial=operation.method.upper() == "PATCH"))
    def run(body: dict[str, Any]) -> None:
        if body.get("email") == UNIQUE:
            body = body | {"email": f"fuzz-{uuid.uuid4().hex[:12]}@example.com"}
        case = operation.Case(body=body, media_type="application/json", **fixed)
        response = case.call(base_url=base_url, session=session, timeout=10)
        case.validate_response(response, checks=CHECKS)
        _assert_problem_on_4xx(response)
        assert response.status_code < 400 or response.status_code == 409, response.text
        statuses[f"{operation.label} valid {response.status_code}"] += 1

    run()


def test_generated_requests_get_documented_answers(served_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served_api}/openapi.json")
    users = schema.include(path_regex="^/users")
    operations = [result.ok() for result in users.get_all_operations()]
    assert len(operations) == 7
    session = requests.Session()
    statuses: Counter[str] = Counter()

    def a_user() -> dict[str, Any]:
        """A fresh user per operation: DELETE removes its own, the others keep theirs."""
        created = session.post(f"{served_api}/users", json=user_body(), timeout=10)
        return {"path_parameters": {"user_id": created.json()["id"]}}

    for operation in operations:
        has_path = "{user_id}" in operation.path
        has_body = operation.method.upper() in ("POST", "PUT", "PATCH")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, session, served_api, statuses)
            # Random ids only meet 404s: aim at a user that exists too (for invalid data
            # there, the body is what can be invalid).
            if has_path and (mode.is_positive or has_body):
                _fuzz(operation, mode, session, served_api, statuses, **a_user())
        if has_body:
            _fuzz_valid(operation, session, served_api, statuses, **(a_user() if has_path else {}))
    total = sum(statuses.values())
    print(f"api fuzz: {total} cases: {sorted(statuses.items())}")
    assert total >= 1_000, statuses
    # The generated requests reached past validation: users created, changed and conflicting.
    reached = {key.rsplit(" ", 1)[1] for key in statuses}
    assert {"200", "201", "204", "400", "404", "409"} <= reached, statuses
