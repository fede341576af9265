"""The trainer end to end in-process against a real teacher: the loss decreases, metrics
are written, export loads in transformers, a teacher that stays away ends the run with a
checkpoint that resumes exactly, and a cross-tokenizer run masks unaligned positions."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from opd_client.train import pipeline
from opd_client.train.cli import main
from opd_client.train.config_load import load_config
from opd_client.train.loop import train
from opd_client.train.metrics import read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_short_run_decreases_loss_and_exports(make_config: MakeConfig, tmp_path: Path) -> None:
    config = load_config(make_config(max_steps=8, optim__lr=1e-2, checkpoint__interval=8))
    result = train(config)
    assert result.steps_done == 8 and result.last_checkpoint is not None
    rows = read_metrics(Path(config.run_dir))
    assert [r["step"] for r in rows] == list(range(8))
    losses = [r["loss"] for r in rows]
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    for key in ("rkl_support", "student_mass", "teacher_mass", "overlap_ratio", "grad_norm"):
        assert all(r[key] is not None and r[key] >= 0 for r in rows), key
    assert rows[0]["aligned_fraction"] == 1.0 and rows[0]["teacher_latency_s"] > 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    assert main(["export", str(config.run_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template
    saved = _weights(result.last_checkpoint / "model")
    for name, tensor in model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    assert main(["export", str(config.run_dir), str(out)]) == 2  # never overwrites


class _Gone(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


def test_teacher_gone_checkpoints_and_resumes_exactly(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_config(make_config(run_dir=tmp_path / "ref", max_steps=4))
    train(reference)
    expected = [r["loss"] for r in read_metrics(tmp_path / "ref")]

    config = load_config(
        make_config(run_dir=tmp_path / "gone", max_steps=4, teacher_unavailable_timeout_s=0.5)
    )
    real = pipeline.TeacherSession.submit_all  # score_all waits on it too
    calls = {"n": 0}

    def flaky(self, requests):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] >= 4:  # steps 0..2 succeed (one rollout batch each), step 3 never does
            failed: concurrent.futures.Future[object] = concurrent.futures.Future()
            failed.set_exception(_Gone())
            return failed
        return real(self, requests)

    monkeypatch.setattr(pipeline.TeacherSession, "submit_all", flaky)
    with pytest.raises(pipeline.TeacherUnavailableError, match="unavailable"):
        train(config)
    assert (tmp_path / "gone/checkpoints/step-00000003/state.json").is_file()
    monkeypatch.setattr(pipeline.TeacherSession, "submit_all", real)
    result = train(config)
    assert result.start_step == 3 and result.steps_done == 1
    got = [r["loss"] for r in read_metrics(tmp_path / "gone")]
    assert got == pytest.approx(expected, abs=1e-6)


def test_score_with_wait_backs_off_then_carries_on() -> None:
    clock = {"t": 0.0}
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock["t"] += s

    attempts = iter([_Gone(), _Gone(), "ok"])

    def score() -> str:
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    result, waited = pipeline.score_with_wait(score, 100.0, sleep, lambda: clock["t"])
    assert result == "ok" and slept == [1.0, 2.0] and waited == 3.0
    with pytest.raises(pipeline.TeacherUnavailableError):
        pipeline.score_with_wait(
            lambda: (_ for _ in ()).throw(_Gone()), 5.0, sleep, lambda: clock["t"]
        )
    with pytest.raises(ValueError):  # not a teacher outage: raised at once
        pipeline.score_with_wait(lambda: (_ for _ in ()).throw(ValueError("bug")), 5.0, sleep)


def test_cross_tokenizer_run_masks_unaligned(
    make_config: MakeConfig, cross_tok_student: Path, tmp_path: Path
) -> None:
    from opd_client.align import MaskReason

    config = load_config(make_config(student=str(cross_tok_student), max_steps=2))
    captured: list[pipeline.ScoredBatch] = []
    real = pipeline.assemble

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        captured.append(out)
        return out

    import opd_client.train.loop as loop

    loop.assemble = spy  # type: ignore[assignment]
    try:
        train(config)
    finally:
        loop.assemble = real  # type: ignore[assignment]
    rows = read_metrics(Path(config.run_dir))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    unaligned = 0
    for scored in captured:
        for b, plan in enumerate(scored.plans):
            n = len(plan.row_T)
            mask = scored.support.mask_BT[b, :n].numpy()
            assert not mask[plan.row_T < 0].any()
            assert not mask[plan.reason_T != MaskReason.KEPT].any()
            assert not scored.support.mask_BT[b, n:].any()
            unaligned += int((plan.row_T < 0).sum())
    assert unaligned > 0
    assert rows[0]["aligned_fraction"] < 1.0 and rows[0]["masked_by_reason"]


def test_overlapped_scoring_gives_the_sequential_run(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rollout batches a step: batch 2 is generated while batch 1 is scored. The tokens,
    losses and parameters are those of a run that samples everything, then scores; a batch
    whose answer fails while in flight is scored again with the long wait."""
    common = dict(max_steps=3, rollout__batch_size=2, checkpoint__interval=3)
    sequential = load_config(
        make_config(run_dir=tmp_path / "seq", rollout__overlap_scoring=False, **common)
    )
    overlapped = load_config(make_config(run_dir=tmp_path / "ovl", **common))
    assert overlapped.rollout.overlap_scoring
    real = pipeline.TeacherSession.submit_all
    sent: list[int] = []
    fail_call = {"n": 0}  # the call that fails; 0: none

    def recording(self, requests):  # type: ignore[no-untyped-def]
        sent.append(len(requests))
        if len(sent) == fail_call["n"]:
            failed: concurrent.futures.Future[object] = concurrent.futures.Future()
            failed.set_exception(_Gone())
            return failed
        return real(self, requests)

    monkeypatch.setattr(pipeline.TeacherSession, "submit_all", recording)
    one = train(sequential)
    assert sent == [4, 4, 4]  # one stream a step, all four requests on it
    sent.clear()
    fail_call["n"] = 3  # step 1's first batch fails in flight
    two = train(overlapped)
    assert sent == [2, 2, 2, 2, 2, 2, 2]  # two batches a step, step 1's first one twice
    assert two.losses == pytest.approx(one.losses, abs=1e-6)
    a = _weights(tmp_path / "seq/checkpoints/step-00000003/model")
    b = _weights(tmp_path / "ovl/checkpoints/step-00000003/model")
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=1e-6, msg=name)
    records = read_metrics(tmp_path / "ovl")
    assert all(r["teacher_blocked_s"] >= 0 for r in records)
    assert records[1]["teacher_wait_s"] == 0.0  # the SDK-level retry needed no long wait


def test_gradient_checkpointing_changes_nothing_and_bf16_stays_close(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The memory knobs on CPU: recomputing activations gives the same steps; bf16
    autocast (weights stay fp32) gives the same first loss to bf16 precision and trains."""
    common = dict(max_steps=3, checkpoint__interval=3)
    plain = train(load_config(make_config(run_dir=tmp_path / "fp32", **common)))
    recompute = train(
        load_config(make_config(run_dir=tmp_path / "gc", gradient_checkpointing=True, **common))
    )
    assert recompute.losses == pytest.approx(plain.losses, abs=1e-6)
    bf16 = train(load_config(make_config(run_dir=tmp_path / "bf16", precision="bf16", **common)))
    assert all(torch.isfinite(torch.tensor(bf16.losses)))
    assert bf16.losses[0] == pytest.approx(plain.losses[0], rel=3e-2)
    config = load_config(make_config(run_dir=tmp_path / "bf16", precision="bf16", **common))
    moved = _weights(tmp_path / "bf16/checkpoints/step-00000003/model")
    start = _weights(Path(config.student))
    assert all(t.dtype == torch.float32 for t in moved.values())  # master weights stay fp32
    assert any(not torch.equal(moved[n], start[n]) for n in start)  # and they trained
