"""Property test over the gateway's own OpenAPI schema: bodies generated from each POST
route's request schema (valid values near the limits, wrong types, NaN, huge numbers,
lone surrogates, extra keys, raw bytes) never get a 500, and the gateway keeps serving.
Bounded: 60 cases per route, against the real tiny teacher."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = {200, 401, 413, 422, 429, 503, 504}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def from_schema(
    schema: dict[str, Any], components: dict[str, Any], valid: bool
) -> st.SearchStrategy[Any]:
    """Values for one JSON schema. valid=True: of its type and within its bounds (so the
    request reaches the teacher); valid=False: also edges past the bounds, NaN, any code
    point (lone surrogates included: JSON can carry them, UTF-8 cannot) and junk."""
    schema = _resolve(schema, components)
    junk = [] if valid else [JSON_VALUES]
    if "anyOf" in schema:
        branches = [s for s in schema["anyOf"] if not valid or s.get("type") != "null"]
        return st.one_of([from_schema(s, components, valid) for s in branches] + junk)
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 40), 40)
        plain = st.text(
            st.characters(min_codepoint=32, max_codepoint=0x2FFF),
            min_size=max(low, 1),
            max_size=high,
        )
        if valid:
            return plain | st.sampled_from(["12+7=19.", "héllo 😀", " the teacher"])
        anything = st.text(st.characters(codec=None), max_size=high)
        return st.one_of(st.sampled_from(["", "\ud800", "\x00"]), anything, *junk)
    if kind == "integer":
        low, high = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
        if valid:
            return st.integers(min_value=low, max_value=max(min(high, 12), low))
        return st.sampled_from([low - 1, high, high + 1, -(2**63), 2**64]) | st.one_of(*junk)
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        if valid:
            return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
        return st.floats(allow_nan=True, allow_infinity=True) | st.one_of(*junk)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = from_schema(schema.get("items", {}), components, valid)
        low, high = schema.get("minItems", 0), min(schema.get("maxItems", 8), 8)
        if valid:
            return st.lists(items, min_size=low, max_size=max(low, high))
        return st.lists(items, max_size=high + 2) | st.one_of(*junk)
    if kind == "object" or "properties" in schema:
        return request_bodies(schema, components)
    return JSON_VALUES


def request_bodies(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Objects of `schema`: each field valid, broken or absent; now and then an unknown key."""
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))

    def field(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
        valid = from_schema(prop, components, valid=True)
        return st.one_of(valid, valid, valid, from_schema(prop, components, valid=False))

    unknown = st.dictionaries(st.sampled_from(["extra", "topk", "ids"]), JSON_VALUES, max_size=1)
    return st.builds(
        lambda given, more: {**given, **more},
        st.fixed_dictionaries(
            {name: field(p) for name, p in properties.items() if name in required},
            optional={name: field(p) for name, p in properties.items() if name not in required},
        ),
        st.one_of(st.just({}), st.just({}), st.just({}), st.just({}), unknown),
    )


@pytest.fixture(scope="module")
def fuzz_api(teacher_address: str) -> Any:
    from opd_gateway.app import create_app
    from opd_gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(teacher=teacher_address, retry_attempts=1, timeout_s=20))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(fuzz_api: TestClient) -> dict[str, Any]:
    return fuzz_api.get("/openapi.json").json()


def _body_strategy(openapi: dict[str, Any], path: str) -> st.SearchStrategy[Any]:
    components = openapi["components"]["schemas"]
    content = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return request_bodies(_resolve(content["schema"], components), components)


# Bodies the schema alone cannot make valid (one of text/token_ids, ids in the
# vocabulary, score_from below N), so that a good share of cases reach the teacher.
SCORABLE = {
    "/v1/support": st.fixed_dictionaries(
        {"top_k": st.integers(1, 12)},
        optional={"score_from": st.integers(0, 1), "surprise_threshold": st.floats(0, 20)},
    ).flatmap(
        lambda base: st.one_of(
            st.builds(lambda t: {**base, "text": t}, st.text(min_size=2, max_size=40)),
            st.builds(
                lambda ids: {**base, "token_ids": ids},
                st.lists(st.integers(0, 511), min_size=2, max_size=40),
            ),
        )
    ),
    "/v1/compare": st.fixed_dictionaries(
        {"texts": st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=2)},
        optional={"top_k": st.integers(1, 12)},
    ),
}


@pytest.mark.parametrize("path", ["/v1/support", "/v1/compare"])
def test_no_body_from_the_schema_gets_a_500(
    fuzz_api: TestClient, openapi: dict[str, Any], path: str
) -> None:
    seen: set[int] = set()

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,  # the same cases every run: no flaky coverage assertion
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=st.one_of(_body_strategy(openapi, path), SCORABLE[path]))
    def check(body: dict[str, Any]) -> None:
        raw = json.dumps(body, allow_nan=True).encode()
        response = fuzz_api.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code in ALLOWED, (body, response.status_code, response.text)
        seen.add(response.status_code)
        if response.status_code != 200:
            assert response.json()["detail"], response.text

    check()
    assert {200, 422} <= seen, seen  # both the scoring path and the error paths were run
    ok = fuzz_api.post("/v1/support", json={"text": "still serving", "top_k": 2})
    assert ok.status_code == 200


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=64))
def test_raw_bytes_never_get_a_500(fuzz_api: TestClient, raw: bytes) -> None:
    response = fuzz_api.post(
        "/v1/support", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code in ALLOWED, (raw, response.status_code, response.text)
