"""The step and the rollouts on tiny models, no teacher service: the fused path gives the
naive path's loss and update for every loss variant, rollouts respect top-p and stop
after the first stop token, the schedule has the documented shape."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from opd_client.align import AlignStats
from opd_client.losses import SupportBatch
from opd_client.train.config import LossConfig, OptimConfig, RolloutConfig
from opd_client.train.pipeline import ScoredBatch
from opd_client.train.rollout import RolloutBatch, SamplingKey, sample_rollouts
from opd_client.train.step import lr_at, train_step


def _fake_batch(vocab: int, k: int = 6) -> tuple[RolloutBatch, ScoredBatch]:
    g = torch.Generator().manual_seed(0)
    B, T = 3, 5
    prompts = [[1, 5, 9], [1, 7], [1, 4, 4, 8]]
    lengths = [5, 3, 4]
    resp = [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]
    ids_BT = torch.zeros((B, T), dtype=torch.long)
    mask_BT = torch.zeros((B, T), dtype=torch.bool)
    for b, r in enumerate(resp):
        ids_BT[b, : len(r)] = torch.tensor(r)
        mask_BT[b, : len(r)] = True
    rollouts = RolloutBatch(
        prompt_ids=prompts,
        response_ids=resp,
        response_ids_BT=ids_BT,
        response_mask_BT=mask_BT,
        old_logprobs_BT=-torch.rand((B, T), generator=g) * 5,
        student_topk_ids_BTK=torch.stack(
            [torch.randperm(vocab, generator=g)[:k] for _ in range(B * T)]
        ).view(B, T, k),
        prompt_index=[0, 1, 2],
    )
    support_ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(B * T)])
    # The student's top-K shares half its ids with the teacher's (intersection non-empty).
    half = k // 2
    rollouts.student_topk_ids_BTK[..., :half] = support_ids.view(B, T, k)[..., 1 : half + 1]
    logprobs = torch.log_softmax(torch.randn((B * T, k), generator=g) * 2, -1).sort(-1, True)[0]
    slot = torch.rand((B, T, k), generator=g) > 0.2
    pos = mask_BT.clone()
    pos[0, 1] = False
    support = SupportBatch(
        support_ids.view(B, T, k), logprobs.view(B, T, k), slot & pos.unsqueeze(-1), pos
    )
    token_lp = -torch.rand((B, T), generator=g) * 4
    scored = ScoredBatch(
        support=support,
        teacher_token_logprobs_BT=token_lp,
        token_mask_BT=pos,
        extra_logprobs_BTK=logprobs.view(B, T, k) - 0.5,
        plans=[],
        stats=AlignStats(),
        latencies_s=[],
        teacher_tokens=0,
    )
    return rollouts, scored


CASES = [
    ("lsm", "teacher_topk", 1.0, 1),
    ("lsm", "teacher_topk_plus_sampled", 1.0, 2),
    ("lsm", "intersection", 1.0, 1),
    ("lsm", "student_topk", 1.0, 1),
    ("lsm", "teacher_topk", 0.5, 1),
    ("unnormalized", "teacher_topk", 1.0, 1),
    ("stopgrad", "teacher_topk", 1.0, 3),
    ("sampled_token", "teacher_topk", 1.0, 1),
]


@pytest.mark.parametrize(("variant", "support", "fraction", "accumulation"), CASES)
def test_fused_step_equals_naive(
    same_tok_student: Path, variant: str, support: str, fraction: float, accumulation: int
) -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(same_tok_student, dtype=torch.float32)
    rollouts, scored = _fake_batch(base.config.vocab_size)
    results, params = [], []
    for fused in (True, False):
        model = copy.deepcopy(base)
        # SGD: the update is the gradient itself. (AdamW's first update is ≈ lr·sign(g),
        # which turns 1e-9 differences of near-zero gradients into lr-sized ones.)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        cfg = LossConfig(
            variant=variant,  # type: ignore[arg-type]
            support=support,  # type: ignore[arg-type]
            entropy_fraction=fraction,
            fused=fused,
            chunk_size=4,
        )
        out = train_step(model, optimizer, rollouts, scored, cfg, 1.0, 1e9, accumulation, 0)
        results.append(out)
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    fused_out, naive_out = results
    assert fused_out.loss == pytest.approx(naive_out.loss, abs=1e-5)
    assert fused_out.grad_norm == pytest.approx(naive_out.grad_norm, rel=1e-4, abs=1e-6)
    assert fused_out.loss != 0.0 or variant == "sampled_token"
    for key, value in fused_out.metrics.items():
        assert value == pytest.approx(naive_out.metrics[key], abs=1e-5), key
    for name, p in params[0].items():
        torch.testing.assert_close(p, params[1][name], rtol=0, atol=1e-5, msg=name)
    moved = [n for n, p in params[0].items() if not torch.equal(p, base.state_dict()[n])]
    assert "lm_head.weight" in moved and len(moved) > 3


def test_accumulation_equals_one_batch(same_tok_student: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(same_tok_student, dtype=torch.float32)
    rollouts, scored = _fake_batch(base.config.vocab_size)
    outs = []
    for accumulation in (1, 3):
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        outs.append(
            (
                train_step(
                    model, optimizer, rollouts, scored, LossConfig(), 1.0, 1e9, accumulation, 0
                ),
                model,
            )
        )
    assert outs[0][0].loss == pytest.approx(outs[1][0].loss, abs=1e-6)
    for (n, a), b in zip(outs[0][1].named_parameters(), outs[1][1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


def test_rollouts_respect_top_p_and_stop(tiny_teacher_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True)
        for c in ("3+4", "the teacher", "1 2 3", "count")
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    cfg = RolloutConfig(top_p=0.5, temperature=1.0, max_new_tokens=12, batch_size=4)
    torch.manual_seed(0)
    batch = sample_rollouts(model, prompts * 2, list(range(8)), cfg, stop, tok.pad_token_id, 8)
    checked = 0
    for b, resp in enumerate(batch.response_ids):
        assert not any(t in stop for t in resp[:-1])
        assert not batch.response_mask_BT[b, len(resp) :].any()
        assert batch.response_mask_BT[b, : len(resp)].all()
        with torch.no_grad():
            logits = model(torch.tensor([batch.prompt_ids[b] + resp])).logits[0].float()
        n = len(batch.prompt_ids[b])
        for t, y in enumerate(resp):
            probs = torch.softmax(logits[n - 1 + t], -1)
            above = probs[probs > probs[y]].sum()  # mass strictly more likely than y
            assert above < cfg.top_p + 1e-4, (b, t, float(above))
            logp = torch.log_softmax(logits[n - 1 + t], -1)
            assert float(batch.old_logprobs_BT[b, t]) == pytest.approx(float(logp[y]), abs=1e-4)
            assert int(batch.student_topk_ids_BTK[b, t, 0]) == int(logp.argmax())
            checked += 1
    assert checked > 20
    torch.manual_seed(0)
    again = sample_rollouts(model, prompts * 2, list(range(8)), cfg, stop, tok.pad_token_id, 8)
    assert again.response_ids == batch.response_ids  # the generator state decides everything


def test_keyed_sampling_is_a_function_of_seed_step_and_sequence(tiny_teacher_dir: Path) -> None:
    """What makes resume and torchrun shards exact: a chunk's tokens depend on (seed, step,
    index of its first sequence), not on the default generator or on who samples it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    prompts = [tok.encode(t) for t in ("3+4", "the teacher", "1 2 3", "count")]
    cfg = RolloutConfig(top_p=0.9, max_new_tokens=10, batch_size=2)

    def sample(rows: slice, key: SamplingKey) -> list[list[int]]:
        out = sample_rollouts(model, prompts[rows], [0] * 4, cfg, [], tok.pad_token_id, 4, key)
        return out.response_ids

    torch.manual_seed(1)
    before = torch.get_rng_state()
    whole = sample(slice(0, 4), SamplingKey(seed=5, step=2))
    assert torch.equal(torch.get_rng_state(), before)  # the default generator is left alone
    torch.manual_seed(99)  # another default generator state changes nothing
    halves = sample(slice(0, 2), SamplingKey(5, 2, 0)) + sample(slice(2, 4), SamplingKey(5, 2, 2))
    assert halves == whole
    assert sample(slice(0, 4), SamplingKey(seed=5, step=3)) != whole


def test_schedule_shapes() -> None:
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, 10) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] > 0.1
    assert lr_at(5, OptimConfig(lr=0.3), 10) == 0.3
