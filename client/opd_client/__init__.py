"""opd's client side: the teacher SDK (no torch) and, behind the `train` extra, the trainer.

`TeacherClient` (async) and `SyncTeacherClient` reach a teacher service; the loss
library, the tokenizer bridge and the trainer live in subpackages that import torch only
when used.
"""

from opd_client.retry import RetryPolicy
from opd_client.sync import SyncTeacherClient
from opd_client.teacher import TeacherClient, TokenizerMismatchError
from opd_client.types import ScoreOutput

__all__ = [
    "RetryPolicy",
    "ScoreOutput",
    "SyncTeacherClient",
    "TeacherClient",
    "TokenizerMismatchError",
]
