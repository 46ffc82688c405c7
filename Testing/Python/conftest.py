"""Shared fixtures: small models and a WordPiece tokenizer built locally (no hub access in tests)."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

WORDS = ("no significant abnormalities acute stroke glioma meningioma metastasis this mri study shows "
         "mass lesion edema enhancement normal brain left right frontal lobe small large not").split()


def write_wordpiece_tokenizer(folder: Path, extra_words=()) -> Path:
    """A real BERT WordPiece tokenizer (uncased) whose vocabulary is the given words plus characters."""
    from HLIPCore.training.vocab import write_bert_tokenizer
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,:;-()'/"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys([*WORDS, *extra_words]))
    vocab += [c for c in chars if c not in vocab] + [f"##{c}" for c in chars]
    return write_bert_tokenizer(vocab, folder)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_wordpiece_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A converted tiny_multiscan_h3 folder (random weights, seed 0, and `tokenizer_dir`), as `hlip convert` writes
    it. Shared by the analysis and Slicer module tests: read it, do not change it."""
    from HLIPCore.model import create_model
    from HLIPCore.model.checkpoint import convert_checkpoint
    torch.manual_seed(0)
    model = create_model("tiny_multiscan_h3")
    folder = tmp_path_factory.mktemp("models")
    torch.save(model.state_dict(), folder / "tiny.pt")
    return convert_checkpoint(folder / "tiny.pt", "tiny_multiscan_h3", folder / "tiny", tokenizer=tokenizer_dir)


@pytest.fixture
def tiny_model():
    from HLIPCore.model import create_model
    torch.manual_seed(0)
    return create_model("tiny_multiscan_h3")
