"""A BERT WordPiece vocabulary from report texts, for models whose text tower is trained from scratch.

The result is a folder `transformers.AutoTokenizer.from_pretrained` loads as a lower-casing BERT tokenizer with
[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 (the ids BERT configs assume: pad_token_id 0).

The vocabulary is built here rather than with `tokenizers`' WordPiece trainer because that trainer is not
deterministic (its vocabulary and ids vary from run to run), and a resumed or repeated run must give the same
ids. Contents: the special tokens, every character of the corpus and of printable ASCII (alone and as a `##` continuation, so no
word becomes [UNK]), then whole words by decreasing frequency (ties alphabetical), then frequent word-initial
and continuation pieces, until `vocab_size`. Radiology reports repeat a small vocabulary, which whole words cover.
"""
import inspect
import string
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Union

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def words_of(texts: Iterable[str]) -> Counter:
    """Word counts after BERT's own normalisation and pre-tokenisation (lower case, punctuation split)."""
    from tokenizers import normalizers, pre_tokenizers
    norm = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True, strip_accents=None)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(norm.normalize_str(str(text))))
    return counts


def choose_vocabulary(counts: Counter, vocab_size: int) -> List[str]:
    # ASCII letters, digits and punctuation always: prompts may use characters the reports never do
    chars = sorted({c for word in counts for c in word} | set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the corpus alphabet ({len(vocab)} tokens)")
    by_count = lambda items: [w for w, _ in sorted(items, key=lambda kv: (-kv[1], kv[0]))]
    pieces = Counter()
    for word, n in counts.items():  # prefixes and continuations of 2-6 characters
        for size in range(2, min(6, len(word) - 1) + 1):
            pieces[word[:size]] += n
            pieces["##" + word[-size:]] += n
    seen = set(vocab)
    for token in by_count(counts.items()) + by_count(pieces.items()):
        if len(vocab) >= vocab_size:
            break
        if token not in seen:
            vocab.append(token)
            seen.add(token)
    return vocab


def build_wordpiece_tokenizer(texts: Iterable[str], out_dir: Union[str, Path], vocab_size: int = 8192) -> Path:
    return write_bert_tokenizer(choose_vocabulary(words_of(texts), vocab_size), out_dir)


def write_bert_tokenizer(vocab: List[str], out_dir: Union[str, Path]) -> Path:
    """A lower-casing BERT WordPiece tokenizer folder (AutoTokenizer-loadable) with exactly this vocabulary."""
    from transformers import BertTokenizerFast
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    # transformers 5 takes the vocabulary as `vocab` and silently ignores 4.x's `vocab_file`
    takes_vocab = "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters
    source = {"vocab" if takes_vocab else "vocab_file": str(out_dir / "vocab.txt")}
    tokenizer = BertTokenizerFast(**source, do_lower_case=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer built with {len(tokenizer)} tokens instead of {len(vocab)}")
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
