"""opd's loss library: pure tensor functions for on-policy distillation (`train` extra).

Why this package exists: the trainer minimises a masked, truncated reverse KL on the
teacher's top-K support (LSM, DESIGN.md §1); this package holds that loss, its variants,
the baseline and the references, and the fused path that computes the student's logits at
the support only. Every function is a pure function of tensors: no I/O, no globals, no
knowledge of models, tokenizers or the wire. Shapes are in the names (B batch, T student
positions, K support slots, V vocabulary, D hidden).

Typical use (fused path):

    batch = teacher_topk_support(ids_BTK, logprobs_BTK, mask_BT)
    z_BTK = support_logits(hidden_BTD, model.lm_head.weight, batch.support_ids_BTK)
    loss = truncated_rkl(z_BTK, batch)
"""

from opd_client.losses.entropy import (
    entropy_from_logits,
    entropy_top_fraction_mask,
    filter_by_entropy,
    student_entropy,
)
from opd_client.losses.fused import student_logz, support_logits
from opd_client.losses.masked import masked_log_softmax, token_mean
from opd_client.losses.reference import full_rkl, generalized_jsd
from opd_client.losses.sampled import discounted_returns, sampled_token_opd
from opd_client.losses.support import (
    SupportBatch,
    student_topk_support,
    teacher_student_intersection_support,
    teacher_topk_support,
    teacher_topk_with_sampled_support,
)
from opd_client.losses.truncated import (
    stopgrad_truncated_rkl,
    truncated_rkl,
    truncated_rkl_per_position,
)

__all__ = [
    "SupportBatch",
    "discounted_returns",
    "entropy_from_logits",
    "entropy_top_fraction_mask",
    "filter_by_entropy",
    "full_rkl",
    "generalized_jsd",
    "masked_log_softmax",
    "sampled_token_opd",
    "stopgrad_truncated_rkl",
    "student_entropy",
    "student_logz",
    "student_topk_support",
    "support_logits",
    "teacher_student_intersection_support",
    "teacher_topk_support",
    "teacher_topk_with_sampled_support",
    "token_mean",
    "truncated_rkl",
    "truncated_rkl_per_position",
]
