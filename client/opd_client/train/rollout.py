"""Prompts in, student rollouts out: the JSONL prompt file, data order and top-p sampling.

Why this module exists: OPD is on-policy, so every step starts by sampling responses from
the current student (DESIGN.md §1: top-p 0.9, temperature 1). `sample_rollouts` runs
transformers' `generate` (KV cache, `do_sample`, `top_p`, `temperature`, no top-k) on
left-padded prompts and keeps, per response: the prompt ids, the response ids cut after
the first stop token (EOS or end-of-turn, inclusive), a response mask, the student's
log-probs of the sampled tokens (the raw temperature-1 distribution, sampled-token OPD's
π_old) and the student's top-K ids at each position. A small logits processor records
those from each step's [B, V] logits, so no [T, V] tensor is kept.

Given a `SamplingKey` (the loop always gives one), each chunk of `rollout.batch_size`
sequences samples under its own seed, a pure function of (run seed, step, index of the
chunk's first sequence in the step): a resumed run samples the same tokens without any
generator state, and under torchrun each rank's chunks are the ones one process would
have sampled (exactly so when a rank's share is a multiple of the batch size). Without a
key, sampling draws from torch's default generator. Data order is a pure function of
(seed, position), so the position is the only data state.

What it does not know: the teacher, the tokenizer bridge and the loss.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from opd_client.train.config import ConfigError, RolloutConfig

PromptValue = str | tuple[Mapping[str, str], ...]


@dataclass(frozen=True)
class PromptRecord:
    """One line of the prompts file. `prompt` is a text or chat messages; `teacher`, when
    given, names the teacher that scores it (otherwise `task` routes it)."""

    prompt: PromptValue
    answer: str | None
    task: str | None
    line: int
    teacher: str | None = None


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Parses the JSONL prompts file; any problem is a ConfigError naming the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts: {p} is not a file")
    records: list[PromptRecord] = []
    with p.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"prompts: {p.name} line {number}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: not JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: expected an object, got {type(obj).__name__}")
            records.append(_record(obj, where, number))
    if not records:
        raise ConfigError(f"prompts: {p} holds no prompts")
    return records


def _record(obj: dict[str, Any], where: str, number: int) -> PromptRecord:
    has_messages, has_prompt = "messages" in obj, "prompt" in obj
    if has_messages == has_prompt:
        raise ConfigError(f"{where}: needs exactly one of 'messages' and 'prompt'")
    prompt: PromptValue
    if has_prompt:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise ConfigError(f"{where}: 'prompt' must be a non-empty string")
        prompt = obj["prompt"]
    else:
        msgs = obj["messages"]
        ok = isinstance(msgs, list) and len(msgs) > 0
        ok = ok and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in msgs
        )
        if not ok:
            raise ConfigError(
                f"{where}: 'messages' must be a non-empty list of {{role, content}} strings"
            )
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in msgs)
    for key in ("answer", "task", "teacher"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ConfigError(f"{where}: '{key}' must be a string")
    return PromptRecord(prompt, obj.get("answer"), obj.get("task"), number, obj.get("teacher"))


def prompt_order(num_prompts: int, seed: int, start: int, count: int) -> list[int]:
    """Indices of prompts start..start+count-1 of the endless, per-epoch shuffled stream."""
    out: list[int] = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_prompts)
        perm = np.random.default_rng([seed, epoch]).permutation(num_prompts)
        out.append(int(perm[offset]))
    return out


@dataclass
class RolloutBatch:
    """B sampled responses. Lists are per sequence; tensors are right-padded to T.

    prompt_ids: student prompt ids (chat template applied) per sequence.
    response_ids: response ids up to and including the first stop token.
    response_ids_BT: int64 [B, T], pad id after the end.
    response_mask_BT: bool [B, T], True on response tokens.
    old_logprobs_BT: float32 [B, T], log π(y_t | c_t) at sampling time (temperature 1,
        no top-p); 0 after the end.
    student_topk_ids_BTK: int64 [B, T, K], the student's K most likely ids at each position.
    prompt_index: index of each sequence's prompt in the prompts file's records.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_ids_BT: Tensor
    response_mask_BT: Tensor
    old_logprobs_BT: Tensor
    student_topk_ids_BTK: Tensor
    prompt_index: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask_BT.sum())


class _Recorder(LogitsProcessor):
    """Sees the raw logits of every generation step before the sampling warpers."""

    def __init__(self, prompt_len: int, k: int) -> None:
        self.prompt_len = prompt_len
        self.k = k
        self.topk: list[Tensor] = []
        self.sampled_logp: list[Tensor] = []
        self._prev: Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        logp_BV = torch.log_softmax(scores.float(), dim=-1)
        if step >= 1 and self._prev is not None:
            self.sampled_logp.append(self._prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.topk.append(logp_BV.topk(min(self.k, logp_BV.shape[-1]), dim=-1).indices)
        self._prev = logp_BV
        return scores

    def finish(self, sequences: Tensor) -> None:
        if self._prev is not None and len(self.sampled_logp) < len(self.topk):
            self.sampled_logp.append(self._prev.gather(-1, sequences[:, -1:]).squeeze(-1))
        self._prev = None


def generation_config(cfg: RolloutConfig, stop_ids: Sequence[int], pad_id: int) -> GenerationConfig:
    return GenerationConfig(
        do_sample=True,
        top_p=cfg.top_p,
        top_k=0,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
    )


@torch.no_grad()
def _generate_chunk(
    model: Any,
    prompts: Sequence[Sequence[int]],
    cfg: RolloutConfig,
    stop_ids: Sequence[int],
    pad_id: int,
    k: int,
) -> tuple[list[list[int]], list[Tensor], list[Tensor]]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, ids in enumerate(prompts):  # left padding: every prompt ends at column width-1
        input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[b, width - len(ids) :] = 1
    recorder = _Recorder(width, k)
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        generation_config=generation_config(cfg, stop_ids, pad_id),
        logits_processor=LogitsProcessorList([recorder]),
    )
    recorder.finish(out)
    generated = out[:, width:].cpu()
    stops = set(int(s) for s in stop_ids)
    responses: list[list[int]] = []
    for row in generated.tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
        responses.append(row[:cut])
    steps = generated.shape[1]
    logp_BS = torch.stack(recorder.sampled_logp[:steps], 1).cpu() if steps else torch.zeros(0)
    topk_BSK = torch.stack(recorder.topk[:steps], 1).cpu() if steps else torch.zeros(0)
    return responses, list(logp_BS), list(topk_BSK)


@dataclass(frozen=True)
class SamplingKey:
    """Where a step's sampling comes from: the run's seed, the step, and the index (in the
    whole step, all ranks) of this call's first sequence."""

    seed: int
    step: int
    first_sequence: int = 0

    def chunk_seed(self, offset: int) -> int:
        """The seed of the chunk that starts `offset` sequences into this call."""
        entropy = [self.seed, self.step, self.first_sequence + offset]
        state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        return (int(state[0]) << 31) | (int(state[1]) >> 1)


@contextlib.contextmanager
def _seeded(model: Any, seed: int | None) -> Iterator[None]:
    """Runs the block under `seed`, leaving torch's default generator as it was."""
    if seed is None:
        yield
        return
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def sample_rollouts(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    prompt_index: Sequence[int],
    cfg: RolloutConfig,
    stop_ids: Sequence[int],
    pad_id: int,
    k: int,
    key: SamplingKey | None = None,
) -> RolloutBatch:
    """`cfg.samples_per_prompt` responses per prompt, generated `cfg.batch_size` at a time,
    each chunk under `key`'s seed for it (or from the default generator without a key)."""
    was_training = model.training
    model.eval()
    seqs = [list(p) for p in prompt_ids for _ in range(cfg.samples_per_prompt)]
    index = [i for i in prompt_index for _ in range(cfg.samples_per_prompt)]
    responses: list[list[int]] = []
    logps: list[Tensor] = []
    topks: list[Tensor] = []
    try:
        for start in range(0, len(seqs), cfg.batch_size):
            with _seeded(model, key.chunk_seed(start) if key else None):
                r, lp, tk = _generate_chunk(
                    model, seqs[start : start + cfg.batch_size], cfg, stop_ids, pad_id, k
                )
            responses += r
            logps += lp
            topks += tk
    finally:
        model.train(was_training)
    B, T = len(seqs), max([len(r) for r in responses] + [1])
    ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((B, T), dtype=torch.bool)
    old_BT = torch.zeros((B, T), dtype=torch.float32)
    kk = topks[0].shape[-1] if topks and topks[0].numel() else k
    topk_BTK = torch.zeros((B, T, kk), dtype=torch.long)
    for b, resp in enumerate(responses):
        n = len(resp)
        if n:
            ids_BT[b, :n] = torch.tensor(resp, dtype=torch.long)
            mask_BT[b, :n] = True
            old_BT[b, :n] = logps[b][:n]
            topk_BTK[b, :n] = topks[b][:n]
    return RolloutBatch(seqs, responses, ids_BT, mask_BT, old_BT, topk_BTK, index)


def take_rollouts(batch: RolloutBatch, rows: Sequence[int]) -> RolloutBatch:
    """The rows `rows` of `batch`, in that order (T unchanged)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return RolloutBatch(
        [batch.prompt_ids[r] for r in rows],
        [batch.response_ids[r] for r in rows],
        batch.response_ids_BT[index],
        batch.response_mask_BT[index],
        batch.old_logprobs_BT[index],
        batch.student_topk_ids_BTK[index],
        [batch.prompt_index[r] for r in rows],
    )


def concat_rollouts(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One RolloutBatch from several, in order, right-padded to the longest response."""
    B = sum(len(b.response_ids) for b in batches)
    T = max([b.response_ids_BT.shape[1] for b in batches] + [1])
    K = batches[0].student_topk_ids_BTK.shape[-1]
    ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((B, T), dtype=torch.bool)
    old_BT = torch.zeros((B, T), dtype=torch.float32)
    topk_BTK = torch.zeros((B, T, K), dtype=torch.long)
    row = 0
    for batch in batches:
        n, t = batch.response_ids_BT.shape
        ids_BT[row : row + n, :t] = batch.response_ids_BT
        mask_BT[row : row + n, :t] = batch.response_mask_BT
        old_BT[row : row + n, :t] = batch.old_logprobs_BT
        topk_BTK[row : row + n, :t] = batch.student_topk_ids_BTK
        row += n
    return RolloutBatch(
        [p for b in batches for p in b.prompt_ids],
        [r for b in batches for r in b.response_ids],
        ids_BT,
        mask_BT,
        old_BT,
        topk_BTK,
        [i for b in batches for i in b.prompt_index],
    )
