"""The OpenAPI document at /docs describes the users API as it behaves."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url


async def test_docs_and_schema(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths["/users"]) == {"get", "post"}
    assert set(paths["/users/{user_id}"]) == {"get", "put", "patch", "delete"}
    history = paths["/users/{user_id}/messages"]["get"]
    assert {p["name"] for p in history["parameters"]} == {
        "user_id",
        "kind",
        "status",
        "limit",
        "cursor",
    }
    assert {"200", "400", "404"} <= set(history["responses"])
    page = schema["components"]["schemas"]["MessagePage"]
    assert set(page["properties"]) == {"data", "nextCursor"}
    row = schema["components"]["schemas"]["MessageOut"]["properties"]
    assert {"kind", "status", "attempts", "lastError", "scheduledAt", "sentAt"} <= set(row)
    post = paths["/users"]["post"]
    assert {"201", "400", "401", "409", "429"} <= set(post["responses"])
    assert "422" not in post["responses"]
    body = schema["components"]["schemas"]["UserWrite"]
    assert body["additionalProperties"] is False
    assert {"firstName", "lastName", "email", "dateOfBirth"} <= set(body["required"])
    assert {"timezone", "timezoneOffset"} <= set(body["properties"])


async def test_every_error_is_documented_as_a_problem(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    problem = schema["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status"]
    for path, operations in schema["paths"].items():
        if not path.startswith("/users"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"400", "401", "429", "503"} <= set(responses), (method, path)
            if method in ("post", "put", "patch"):
                assert {"413", "415"} <= set(responses), (method, path)
            for code, response in responses.items():
                if int(code) >= 400:
                    assert response["content"] == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }, (method, path, code)
            for code in ("429", "503"):
                assert responses[code]["headers"]["Retry-After"]["required"] is True


async def test_probes_document_their_503(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for probe in ("/health/db", "/health/queue", "/health/detailed", "/ready"):
        assert "503" in paths[probe]["get"]["responses"], probe
    assert "503" not in paths["/alive"]["get"]["responses"]
