"""Which part of a report a training step sees.

Radiology reports put the answer last (IMPRESSION) after long EXAMINATION/TECHNIQUE sections, and a small text
tower reads at most `context_length` tokens: with the full report the impression is often cut off. Modes:
  full               the report as written
  impression         IMPRESSION only (short, closest to zero-shot prompts; FINDINGS when there is none)
  impression_first   IMPRESSION, then FINDINGS; other sections dropped
  sections           per sample, one of: IMPRESSION, FINDINGS, IMPRESSION + FINDINGS (text augmentation)
A report without recognisable sections is used as written.

`drop_words` is a second, independent text augmentation (random deletion): a text tower trained from scratch on a
few thousand reports learns whole-report patterns ("bilateral ring-enhancing lesions" -> metastasis) and then
misplaces a one-word zero-shot prompt ("Metastasis") that no report says alone. Deleting words at random makes
every informative word carry the finding on its own.
"""
import re
from typing import Dict, Optional

import torch

MODES = ("full", "impression", "impression_first", "sections")
_HEADER = re.compile(r"^\s*([A-Z][A-Z /&-]{2,40}):\s*", re.MULTILINE)


def split_sections(report: str) -> Dict[str, str]:
    """{'FINDINGS': '...', 'IMPRESSION': '...', ...} from 'HEADER:' lines; {} when there are none."""
    marks = list(_HEADER.finditer(report))
    sections = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(report)
        body = report[mark.end():end].strip()
        if body:
            sections[mark.group(1).strip().upper()] = body
    return sections


def report_text(report: str, mode: str = "full", gen: Optional[torch.Generator] = None) -> str:
    if mode not in MODES:
        raise ValueError(f"report_text must be one of {MODES}, not {mode!r}")
    sections = split_sections(report) if mode != "full" else {}
    impression, findings = sections.get("IMPRESSION"), sections.get("FINDINGS")
    if not impression and not findings:
        return report
    views = [v for v in (impression, findings) if v]
    both = " ".join(views)
    if mode == "impression":
        return impression or findings
    if mode == "impression_first":
        return both
    choices = views + ([both] if len(views) == 2 else [])
    pick = int(torch.randint(len(choices), (1,), generator=gen)) if gen is not None else len(choices) - 1
    return choices[pick]


def drop_words(text: str, p: float, gen: Optional[torch.Generator] = None) -> str:
    """`text` with each whitespace-separated word deleted with probability `p` (at least one word is kept)."""
    words = text.split()
    if p <= 0 or len(words) < 2:
        return text
    keep = torch.rand(len(words), generator=gen) >= p
    if not keep.any():
        keep[int(torch.randint(len(words), (1,), generator=gen))] = True
    return " ".join(w for w, k in zip(words, keep.tolist()) if k)
