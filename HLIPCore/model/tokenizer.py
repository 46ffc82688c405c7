"""Tokenizer for the text tower: a Hugging Face WordPiece tokenizer from a local folder or a hub name."""
import html
import os
import re
from typing import List, Sequence, Union

import torch

from ..errors import ConfigError


def clean_text(text: str) -> str:
    """open_clip's default cleaning: HTML unescape and collapse whitespace (ftfy when installed)."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class HFTokenizer:
    def __init__(self, name_or_path: Union[str, os.PathLike], context_length: int = 256):
        from transformers import AutoTokenizer
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1: give a local tokenizer folder)" if offline else ""
            raise ConfigError(f"tokenizer {name_or_path}: cannot be loaded{hint}: {str(exc).splitlines()[0]}") from None
        self.context_length = context_length
        self.name_or_path = str(name_or_path)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Token ids [len(texts), L], padded to the longest text (at most `context_length`).

        Padding to the longest instead of to `context_length` gives the same [CLS] output (padding is masked)
        at a fraction of the cost.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts: List[str] = [clean_text(t) for t in texts]
        return self.tokenizer(texts, return_tensors="pt", max_length=self.context_length, padding="longest",
                              truncation=True).input_ids

    def save_pretrained(self, path) -> None:
        self.tokenizer.save_pretrained(str(path))
