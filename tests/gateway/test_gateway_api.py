"""The gateway's JSON API against a real teacher on the tiny model: every value equals the
teacher's own `Score` answer, token strings and spans are right, and bad input gets a
422/413 naming the field while the gateway keeps serving."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from opd_client import SyncTeacherClient
from opd_gateway.schemas import CompareResponse, InfoResponse, SupportResponse

TEXT = "12+7=19. the teacher adds numbers and counts 3 4 5."


@pytest.fixture(scope="module")
def tokenizer(direct: SyncTeacherClient) -> Tokenizer:
    return Tokenizer.from_str(direct.get_tokenizer()["tokenizer.json"].decode())


def _entropy(logprobs: np.ndarray) -> float:
    q = np.exp(logprobs.astype(np.float64) - np.logaddexp.reduce(logprobs.astype(np.float64)))
    return float(-np.sum(q * np.log(q)))


def _check_against_teacher(
    body: dict, direct: SyncTeacherClient, tokenizer: Tokenizer, ids: list[int], score_from: int
) -> None:
    top_k = body["top_k"]
    out = direct.score(ids, top_k=top_k, score_from=score_from, return_token_logprobs=True)
    assert out.token_logprobs_P is not None and out.token_ranks_P is not None
    tokens = body["tokens"]
    assert [t["id"] for t in tokens] == ids
    for i, token in enumerate(tokens):
        assert token["index"] == i
        assert token["token"] == tokenizer.decode([ids[i]], skip_special_tokens=False)
        if i <= score_from:
            assert token["predicted"] is False
            assert token["logprob"] is None and token["rank"] is None
            assert token["top"] == {"ids": [], "tokens": [], "logprobs": []}
            continue
        row = i - 1 - score_from
        assert token["predicted"] is True
        assert np.float32(token["logprob"]) == out.token_logprobs_P[row]
        assert np.float32(token["surprise"]) == -out.token_logprobs_P[row]
        assert token["rank"] == int(out.token_ranks_P[row])
        assert token["top"]["ids"] == out.topk_ids_PK[row].tolist()
        assert np.array_equal(
            np.array(token["top"]["logprobs"], dtype=np.float32), out.topk_logprobs_PK[row]
        )
        assert token["top"]["tokens"] == [
            tokenizer.decode([int(j)], skip_special_tokens=False) for j in out.topk_ids_PK[row]
        ]
        assert math.isclose(token["entropy"], _entropy(out.topk_logprobs_PK[row]), rel_tol=1e-5)
    assert body["next"]["ids"] == out.topk_ids_PK[-1].tolist()
    surprises = [t["surprise"] for t in tokens if t["predicted"]]
    summary = body["summary"]
    assert summary["num_tokens"] == len(ids)
    assert summary["num_predicted"] == len(surprises)
    assert math.isclose(summary["mean_surprise"], float(np.mean(surprises)), rel_tol=1e-6)
    assert math.isclose(summary["max_surprise"], max(surprises), rel_tol=1e-6)
    threshold = summary["surprise_threshold"]
    assert summary["above_threshold"] == sum(s > threshold for s in surprises)
    worst = [w["surprise"] for w in summary["worst"]]
    assert worst == sorted(surprises, reverse=True)[: len(worst)]


def test_text_rows_equal_the_teachers_score(
    api: TestClient, direct: SyncTeacherClient, tokenizer: Tokenizer
) -> None:
    response = api.post("/v1/support", json={"text": TEXT, "top_k": 5, "surprise_threshold": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    SupportResponse.model_validate(body)
    reference = direct.score(text=TEXT, top_k=1, return_token_logprobs=True)
    assert reference.token_ids_N is not None and reference.offsets_N2 is not None
    ids = reference.token_ids_N.tolist()
    assert [[t["start"], t["end"]] for t in body["tokens"]] == reference.offsets_N2.tolist()
    assert body["text"] == TEXT and body["model"] == direct.get_info().model
    _check_against_teacher(body, direct, tokenizer, ids, score_from=0)


def test_token_ids_with_score_from_and_decoded_spans(
    api: TestClient, direct: SyncTeacherClient, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode("héllo 😀 the teacher", add_special_tokens=False).ids
    response = api.post("/v1/support", json={"token_ids": ids, "top_k": 3, "score_from": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    SupportResponse.model_validate(body)
    _check_against_teacher(body, direct, tokenizer, ids, score_from=2)
    text = body["text"]
    assert text == "héllo 😀 the teacher"
    spans = [(t["start"], t["end"]) for t in body["tokens"]]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans
    # The token ids of one multi-byte character together span exactly that character.
    assert "".join(text[s:e] for s, e in spans) == text


def test_student_logprobs_add_the_log_ratio(api: TestClient) -> None:
    first = api.post("/v1/support", json={"text": "3+4=7.", "top_k": 2}).json()
    n = len(first["tokens"])
    student = [None] + [-0.5] * (n - 1)
    body = api.post(
        "/v1/support", json={"text": "3+4=7.", "top_k": 2, "student_logprobs": student}
    ).json()
    for token in body["tokens"][1:]:
        assert token["student_logprob"] == -0.5
        assert math.isclose(token["log_ratio"], -0.5 - token["logprob"], rel_tol=1e-6)
    assert body["tokens"][0]["log_ratio"] is None
    ratios = [t["log_ratio"] for t in body["tokens"][1:]]
    assert math.isclose(body["summary"]["mean_log_ratio"], float(np.mean(ratios)), rel_tol=1e-6)


def test_compare_scores_two_texts_side_by_side(api: TestClient) -> None:
    texts = ["3+4=7. the teacher adds", "3+4=9. teacher the adds"]
    response = api.post("/v1/compare", json={"texts": texts, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    CompareResponse.model_validate(body)
    singles = [api.post("/v1/support", json={"text": t, "top_k": 3}).json() for t in texts]
    for result, single in zip(body["results"], singles, strict=True):
        assert result["tokens"] == single["tokens"]
        assert result["summary"] == single["summary"]
    a, b = (r["summary"]["mean_surprise"] for r in body["results"])
    assert math.isclose(body["mean_surprise_difference"], b - a, rel_tol=1e-9)


def test_info_is_the_teachers_get_info(api: TestClient, direct: SyncTeacherClient) -> None:
    body = api.get("/v1/info").json()
    InfoResponse.model_validate(body)
    info = direct.get_info()
    assert body["fingerprint"] == info.fingerprint
    assert body["max_top_k"] == info.max_top_k and body["vocab_size"] == info.vocab_size
    assert body["gateway_auth"] is False


def test_health_metrics_docs_and_page(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    api.post("/v1/support", json={"text": "1 2 3", "top_k": 2})
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert 'opd_gateway_requests_total{method="POST",route="/v1/support",status="200"}' in (
        metrics.text
    )
    assert "opd_gateway_scored_tokens_total" in metrics.text
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    request_schema = schema["components"]["schemas"]["SupportRequest"]["properties"]
    assert {"text", "token_ids", "top_k", "score_from", "student_logprobs"} <= set(request_schema)
    assert all(field.get("description") for field in request_schema.values())
    page = api.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert api.get("/static/app.js").status_code == 200


BAD_BODIES = [
    ({"text": "", "top_k": 3}, "text"),
    ({"text": "ab", "token_ids": [1, 2], "top_k": 3}, "text, token_ids"),
    ({"top_k": 3}, "text, token_ids"),
    ({"text": "ab", "top_k": 0}, "top_k"),
    ({"text": "ab", "top_k": 257}, "top_k"),  # above the teacher's max_top_k 256
    ({"text": "ab", "top_k": 10**12}, "top_k"),
    ({"token_ids": [5, 99999], "top_k": 3}, "token_ids"),  # outside the vocabulary
    ({"token_ids": [5, -1], "top_k": 3}, "token_ids[1]"),
    ({"token_ids": [], "top_k": 3}, "token_ids"),
    ({"text": "ab c", "top_k": 3, "score_from": 50}, "score_from"),
    ({"text": "ab c", "top_k": 3, "student_logprobs": [-1.0]}, "student_logprobs"),
    ({"text": "ab c", "top_k": 3, "student_logprobs": [0.5, 0, 0, 0]}, "student_logprobs[0]"),
    ({"text": "ab", "topk": 3}, "topk"),
    ({"texts": ["a"]}, "texts"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_input_is_422_naming_the_field(api: TestClient, body: dict, field: str) -> None:
    path = "/v1/compare" if "texts" in body else "/v1/support"
    response = api.post(path, json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["field"] == field, answer
    assert field.split("[")[0].split(",")[0] in answer["detail"]


def test_non_utf8_and_broken_json_bodies_are_422(api: TestClient) -> None:
    for raw in (b'{"text": "\xff\xfe", "top_k": 2}', b'{"text": ', b"\x00\x01"):
        response = api.post(
            "/v1/support", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (raw, response.text)
        assert response.json()["field"] == "body"
    assert api.post("/v1/support", json={"text": "still serving", "top_k": 2}).status_code == 200


def test_text_over_max_text_chars_is_422(make_gateway) -> None:  # type: ignore[no-untyped-def]
    api = make_gateway(max_text_chars=10)
    response = api.post("/v1/support", json={"text": "x" * 11, "top_k": 2})
    assert response.status_code == 422 and response.json()["field"] == "text"
    assert "max_text_chars 10" in response.json()["detail"]


def test_oversized_body_is_413_declared_or_streamed(make_gateway) -> None:  # type: ignore[no-untyped-def]
    api = make_gateway(max_body_bytes=4096)
    big = b'{"text": "' + b"a" * 8000 + b'", "top_k": 2}'
    declared = api.post("/v1/support", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["field"] == "body"

    def chunks():  # no Content-Length: counted while it streams in
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = api.post(
        "/v1/support", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text
    assert api.post("/v1/support", json={"text": "ok", "top_k": 2}).status_code == 200


def test_bearer_token_guards_v1_but_not_health(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    api = make_gateway(auth_token_file=token_file)
    body = {"text": "1 2 3", "top_k": 2}
    missing = api.post("/v1/support", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = api.post("/v1/support", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert api.get("/v1/info").status_code == 401
    good = api.post("/v1/support", json=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200
    assert api.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).json()["gateway_auth"]
    for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/"):
        assert api.get(open_path).status_code == 200, open_path
