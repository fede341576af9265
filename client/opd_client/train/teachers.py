"""The job's teachers: one connection, tokenizer bridge and request planner per teacher,
and the routing of every prompt to one of them.

Why this module exists: a student may learn from several teacher services at once, each
expert in some tasks (DESIGN.md §1; MOPD-style multi-teacher distillation). Each teacher
may have its own tokenizer, so each gets its own `TokenizerBridge`, built from the
tokenizer files its `GetTokenizer` streams; each gets its own `TeacherSession` (its own
ScoreStream). A prompt goes to the teacher its JSONL line names (`teacher`), else to the
teacher whose `tasks` list its `task`, else to `default_teacher` (or the only teacher);
a prompt with nowhere to go is a start-up error naming its line.

Everything here runs before the run directory is touched: an unreachable teacher, a K
above its `max_top_k`, an unreadable token file or an unroutable prompt is a ConfigError
that names the teacher (`teachers[1] (sorter)`) or the prompts file line.

What it does not know: sampling, the loss, checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_client.align import AlignConfig, AlignmentPlan, TokenizerBridge, TokenizerSide
from opd_client.align.errors import AlignError
from opd_client.train.config import ConfigError, TeacherConfig, TrainConfig
from opd_client.train.pipeline import TeacherSession, plan_requests
from opd_client.train.rollout import PromptRecord, RolloutBatch

Planner = Callable[[RolloutBatch], tuple[list[AlignmentPlan], list[dict[str, Any]]]]


@dataclass
class TeacherLink:
    """One teacher as the loop uses it: its config, open session, GetInfo and bridge."""

    index: int
    config: TeacherConfig
    session: TeacherSession
    info: Any
    bridge: TokenizerBridge
    plan: Planner

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def where(self) -> str:
        return f"teachers[{self.index}] ({self.name})"

    @property
    def vocab(self) -> int:
        return int(self.info.vocab_size)

    @property
    def fingerprint(self) -> str:
        return str(self.info.fingerprint)


def _where(index: int, config: TeacherConfig) -> str:
    return f"teachers[{index}] ({config.name})"


def _auth_token(index: int, teacher: TeacherConfig) -> str | None:
    if teacher.auth_token_file is None:
        return None
    try:
        return Path(teacher.auth_token_file).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(
            f"{_where(index, teacher)}.auth_token_file: cannot read "
            f"{teacher.auth_token_file}: {err}"
        ) from None


def _connect(config: TrainConfig, index: int) -> tuple[TeacherSession, Any]:
    teacher = config.teachers[index]
    session = TeacherSession(
        teacher.address,
        timeout_s=teacher.timeout_s,
        auth_token=_auth_token(index, teacher),
        client_name=config.teacher_client_name,
    )
    session.__enter__()
    try:
        info = session.get_info()
    except Exception as err:
        session.__exit__(None, None, None)
        detail = err.details() if hasattr(err, "details") else str(err)  # type: ignore[union-attr]
        raise ConfigError(
            f"{_where(index, teacher)}.address: teacher {','.join(teacher.address)} "
            f"unreachable ({detail})"
        ) from None
    return session, info


def _check(config: TrainConfig, index: int, info: Any, bridge: TokenizerBridge) -> None:
    teacher, where = config.teachers[index], _where(index, config.teachers[index])
    if teacher.top_k > info.max_top_k:
        raise ConfigError(
            f"{where}.top_k: {teacher.top_k} > the teacher's max_top_k {info.max_top_k}"
        )
    if config.loss.support == "student_topk":
        if not info.supports_extra_ids:
            raise ConfigError(f"loss.support: student_topk needs extra_ids, which {where} lacks")
        if not bridge.identity:
            raise ConfigError(f"loss.support: student_topk needs {where} to share the tokenizer")


def open_teachers(
    config: TrainConfig,
    student: TokenizerSide,
    records: Sequence[PromptRecord],
    stack: contextlib.ExitStack,
) -> list[TeacherLink]:
    """Connects to every teacher (closed by `stack`), builds its bridge, checks it."""
    align = AlignConfig(
        special_policy=config.masking.special_policy,
        prefix_fallback=config.masking.prefix_fallback,
        on_lossy=config.masking.on_lossy,
    )
    want_token_lp = config.loss.variant == "sampled_token" or (
        config.loss.support == "teacher_topk_plus_sampled"
    )
    links = []
    for index, teacher in enumerate(config.teachers):
        session, info = _connect(config, index)
        stack.push(lambda *exc, s=session: s.__exit__(*exc))
        with tempfile.TemporaryDirectory(prefix="opd-teacher-tok-") as tok_dir:
            try:
                session.save_tokenizer(Path(tok_dir))
                teacher_side = TokenizerSide.load(tok_dir)
            except AlignError as err:
                raise ConfigError(f"{_where(index, teacher)} tokenizer: {err}") from None
        roles = {s.role: int(s.id) for s in info.special_tokens}
        bridge = TokenizerBridge(student, teacher_side, align, teacher_roles=roles)
        _check(config, index, info, bridge)
        plan = functools.partial(
            plan_requests,
            bridge,
            records,
            top_k=teacher.top_k,
            want_token_logprobs=want_token_lp,
            student_topk_extra=config.loss.support == "student_topk",
            teacher_vocab=int(info.vocab_size),
        )
        links.append(TeacherLink(index, teacher, session, info, bridge, plan))
    return links


def route_prompts(
    config: TrainConfig, records: Sequence[PromptRecord], file_name: str
) -> list[int]:
    """The index of the teacher that scores each record, or a ConfigError naming the line."""
    names = [t.name for t in config.teachers]
    routes = []
    for r in records:
        where = f"prompts: {file_name} line {r.line}"
        if r.teacher is not None:
            if r.teacher not in names:
                raise ConfigError(f"{where}: teacher {r.teacher!r} is not one of {names}")
            routes.append(names.index(r.teacher))
            continue
        index = config.teacher_for(r.task)
        if index is None:
            raise ConfigError(
                f"{where}: task {r.task!r} has no teacher (no teachers[].tasks lists it and "
                "default_teacher is empty)"
            )
        routes.append(index)
    return routes
