"""The teacher's tokenizer as the service needs it: files to stream, text to ids, roles.

The service tokenizes `text` inputs (no special tokens, no template), streams its
tokenizer files through `GetTokenizer` so clients never download one, and names its
special tokens by role for `GetInfo`. It uses the `tokenizers` library directly: the
fast tokenizer file is all a transformers or vLLM model directory needs to share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from opd_protos import tokenizer_digest
from opd_teacher.types import SpecialTokenInfo

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# Role names of DESIGN.md §2, with the texts that mark them across common model families.
_ROLE_TEXTS = {
    "end_of_turn": ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"),
    "think_start": ("<think>",),
    "think_end": ("</think>",),
    "tool_call_start": ("<tool_call>",),
    "tool_call_end": ("</tool_call>",),
}


@dataclass(frozen=True)
class EncodedText:
    token_ids_N: np.ndarray  # int32 [N]
    offsets_N2: np.ndarray  # int32 [N, 2]: [start, end) character spans


class TeacherTokenizer:
    """Loaded once from a model directory; immutable afterwards."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.json: opd serves fast tokenizers only"
            )
        self.files: tuple[tuple[str, bytes], ...] = tuple(
            (name, (model_dir / name).read_bytes())
            for name in TOKENIZER_FILES
            if (model_dir / name).is_file()
        )
        self.sha256 = tokenizer_digest(self.files)
        self.total_bytes = sum(len(data) for _, data in self.files)
        self._tokenizer = Tokenizer.from_str(dict(self.files)["tokenizer.json"].decode())
        config_bytes = dict(self.files).get("tokenizer_config.json")
        self._config = json.loads(config_bytes) if config_bytes else {}

    @property
    def size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> EncodedText:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return EncodedText(
            token_ids_N=np.asarray(encoding.ids, dtype=np.int32),
            offsets_N2=np.asarray(encoding.offsets, dtype=np.int32).reshape(-1, 2),
        )

    def special_tokens(self) -> tuple[SpecialTokenInfo, ...]:
        """Special tokens by role, from tokenizer_config.json and the known marker texts."""
        found: dict[str, SpecialTokenInfo] = {}
        for role in ("bos", "eos", "pad", "unk"):
            text = self._config.get(f"{role}_token")
            if isinstance(text, dict):  # AddedToken serialised with its flags
                text = text.get("content")
            if (
                isinstance(text, str)
                and (token_id := self._tokenizer.token_to_id(text)) is not None
            ):
                found[role] = SpecialTokenInfo(role, token_id, text)
        for role, texts in _ROLE_TEXTS.items():
            for text in texts:
                if (token_id := self._tokenizer.token_to_id(text)) is not None:
                    found[role] = SpecialTokenInfo(role, token_id, text)
                    break
        return tuple(found.values())
