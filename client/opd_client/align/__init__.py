"""Tokenizer bridge between a student and a teacher tokenizer (behind the `train` extra).

Why: on-policy distillation across tokenizers needs the teacher to score the student's
response in its own tokens and the teacher's top-K to be expressed in the student's
vocabulary. This package renders prompts with each side's template, re-tokenizes
responses, aligns positions by UTF-8 byte offset, maps top-K tokens by their bytes and
special tokens by role, masks what cannot be compared, and reports how much survived.

What it does not know: the teacher service (callers pass its rows as arrays) and the
loss (it produces the `SupportBatch` fields as arrays or tensors). See DESIGN.md §2.

    bridge = TokenizerBridge.from_paths("student_tok/", "teacher_tok/")
    plan = bridge.plan(messages, response_ids)             # send plan.teacher_ids_N
    support = bridge.support(plan, topk_ids_PK, topk_logprobs_PK)
    batch = collate([support, ...])                        # -> SupportBatch fields
"""

from opd_client.align.bridge import AlignedSupport, AlignmentPlan, TokenizerBridge, collate
from opd_client.align.config import AlignConfig
from opd_client.align.errors import (
    AlignError,
    LossyEncodingError,
    TokenizerLoadError,
    UnsupportedTokenizerError,
)
from opd_client.align.special import find_roles
from opd_client.align.stats import AlignStats, MaskReason
from opd_client.align.tokenizer import TokenizerSide, load_hf_tokenizer
from opd_client.align.vocab_map import VocabMap, build_vocab_map, map_topk

__all__ = [
    "AlignConfig",
    "AlignError",
    "AlignStats",
    "AlignedSupport",
    "AlignmentPlan",
    "LossyEncodingError",
    "MaskReason",
    "TokenizerBridge",
    "TokenizerLoadError",
    "TokenizerSide",
    "UnsupportedTokenizerError",
    "VocabMap",
    "build_vocab_map",
    "collate",
    "find_roles",
    "load_hf_tokenizer",
    "map_topk",
]
