"""Prompt sets: the editable description of what a zero-shot analysis asks the model.

A prompt set is a JSON (or YAML) document: tasks -> classes -> prompts, plus the templates that turn each prompt
into a sentence. The format is documented in `Resources/prompts/README.md`; the built-in sets live next to it.

- `multiclass` task: one score per class, softmax over the task's classes.
- `multilabel` task: per class a [negative, positive] pair; score = softmax over the pair -> P(positive).
- A multiclass task may name a `reference` class (e.g. "Normal"): scores are unchanged, but the attention map of
  each other class explains its log-odds against the reference ("this finding rather than a normal study").

Every text the text tower sees is `template.replace("{}", prompt)`. Templates come from the class if it has its
own, else from the task, else from the set. Expansion order (stable, relied on by caches): for each prompt in
order, for each template in order.

Pure Python: no torch, Slicer or Qt import here.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .documents import import_yaml, is_yaml, read_document as _read_document
from .errors import ConfigError
from .paths import resources_dir

KINDS = ("multiclass", "multilabel")
MODALITIES = ("MR", "CT")
PLACEHOLDER = "{}"
FORMAT_VERSION = 1  # bumps invalidate fingerprints (text-embedding caches)

# Keys allowed at each level, in the order `to_dict` writes them.
SET_KEYS = ("name", "title", "description", "modality", "templates", "tasks")
TASK_KEYS = ("name", "kind", "reference", "templates", "classes")
CLASS_KEYS = ("name", "prompts", "negative_prompts", "templates", "symptoms")

# Likely typos that difflib alone would not map well.
_ALIASES = {
    "prompt": "prompts", "positive_prompts": "prompts", "positives": "prompts", "positive": "prompts",
    "negative_prompt": "negative_prompts", "negatives": "negative_prompts", "negative": "negative_prompts",
    "template": "templates", "symptom": "symptoms", "descriptions": "symptoms",
    "type": "kind", "labels": "classes", "class": "classes", "classnames": "classes", "task": "tasks",
}


# ----------------------------------------------------------------------------------------------------------------
# Data model


@dataclass
class ClassPrompts:
    """One class of a task. `negative_prompts` only in multilabel tasks; `symptoms` feed prompt learning (ViP)."""
    name: str
    prompts: List[str]
    negative_prompts: List[str] = field(default_factory=list)
    symptoms: List[str] = field(default_factory=list)
    templates: Optional[List[str]] = None  # class-level override of the task's templates

    def effective_templates(self, task_templates: Sequence[str]) -> List[str]:
        return list(self.templates) if self.templates is not None else list(task_templates)

    def texts(self, templates: Sequence[str]) -> List[str]:
        """The (positive) sentences: for each prompt, for each template. `templates` = the task's effective
        templates; the class's own templates win when it has them."""
        return _expand(self.prompts, self.effective_templates(templates))

    def negative_texts(self, templates: Sequence[str]) -> List[str]:
        """The negative sentences of a multilabel class, same order rule as `texts`."""
        return _expand(self.negative_prompts, self.effective_templates(templates))


@dataclass
class Task:
    name: str
    kind: str  # "multiclass" | "multilabel"
    classes: List[ClassPrompts]
    templates: Optional[List[str]] = None  # task-level override of the set's templates
    reference: Optional[str] = None  # multiclass: the class the other classes' maps are explained against

    def effective_templates(self, set_templates: Sequence[str]) -> List[str]:
        return list(self.templates) if self.templates is not None else list(set_templates)

    def class_names(self) -> List[str]:
        return [c.name for c in self.classes]

    def class_index(self, name: str) -> int:
        """Position of class `name` in the task (the column of its scores)."""
        for index, c in enumerate(self.classes):
            if c.name == name:
                return index
        raise KeyError(f"task '{self.name}' has no class '{name}' (classes: {', '.join(self.class_names())})")

    def cls(self, name: str) -> ClassPrompts:
        return self.classes[self.class_index(name)]


@dataclass
class PromptSet:
    name: str
    title: str = ""
    description: str = ""
    modality: str = ""  # "", "MR" or "CT": a hint for choosing a model
    templates: List[str] = field(default_factory=list)
    tasks: List[Task] = field(default_factory=list)

    # -- conversion ---------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any, source: str = "<prompt set>") -> "PromptSet":
        """Build from a parsed document; raises ConfigError "<source>: <path>: <message>" when invalid."""
        issues = validate(d)
        if issues:
            raise ConfigError(_summary(source, issues))
        return cls(
            name=d["name"],
            title=d.get("title", ""),
            description=d.get("description", ""),
            modality=d.get("modality", ""),
            templates=list(d.get("templates", [])),
            tasks=[Task(
                name=t["name"],
                kind=t["kind"],
                templates=list(t["templates"]) if "templates" in t else None,
                reference=t.get("reference"),
                classes=[ClassPrompts(
                    name=c["name"],
                    prompts=list(c["prompts"]),
                    negative_prompts=list(c.get("negative_prompts", [])),
                    symptoms=list(c.get("symptoms", [])),
                    templates=list(c["templates"]) if "templates" in c else None,
                ) for c in t["classes"]],
            ) for t in d["tasks"]],
        )

    def to_dict(self) -> Dict[str, Any]:
        """The canonical document: optional fields only when set; `from_dict(ps.to_dict()) == ps`."""
        d: Dict[str, Any] = {"name": self.name}
        if self.title:
            d["title"] = self.title
        if self.description:
            d["description"] = self.description
        if self.modality:
            d["modality"] = self.modality
        if self.templates:
            d["templates"] = list(self.templates)
        tasks = []
        for t in self.tasks:
            td: Dict[str, Any] = {"name": t.name, "kind": t.kind}
            if t.reference is not None:
                td["reference"] = t.reference
            if t.templates is not None:
                td["templates"] = list(t.templates)
            classes = []
            for c in t.classes:
                cd: Dict[str, Any] = {"name": c.name, "prompts": list(c.prompts)}
                if c.negative_prompts:
                    cd["negative_prompts"] = list(c.negative_prompts)
                if c.templates is not None:
                    cd["templates"] = list(c.templates)
                if c.symptoms:
                    cd["symptoms"] = list(c.symptoms)
                classes.append(cd)
            td["classes"] = classes
            tasks.append(td)
        d["tasks"] = tasks
        return d

    # -- queries ------------------------------------------------------------------------------------------------

    def validate(self) -> List["ValidationIssue"]:
        """Issues of the set as edited (e.g. by the GUI) - empty when it can be saved and used."""
        return validate(self.to_dict())

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"prompt set '{self.name}' has no task '{name}' (tasks: {', '.join(self.task_names())})")

    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def task_templates(self, task: Union[str, Task]) -> List[str]:
        """The templates a task's classes inherit (task override, else the set's)."""
        t = self.task(task) if isinstance(task, str) else task
        return t.effective_templates(self.templates)

    def fingerprint(self) -> str:
        """sha256 of everything that affects text embeddings: per task its name, kind and per class its name and
        expanded sentences (positive, negative, symptoms). Title, description, modality and the set name do not
        count; neither does how a template is inherited, only the sentences it yields."""
        canon = {"format": FORMAT_VERSION, "tasks": []}
        for t in self.tasks:
            tt = t.effective_templates(self.templates)
            canon["tasks"].append({
                "name": t.name, "kind": t.kind,
                "classes": [{"name": c.name, "texts": c.texts(tt), "negative_texts": c.negative_texts(tt),
                             "symptoms": list(c.symptoms)} for c in t.classes],
            })
        blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _expand(prompts: Sequence[str], templates: Sequence[str]) -> List[str]:
    return [tpl.replace(PLACEHOLDER, p) for p in prompts for tpl in templates]


# ----------------------------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class ValidationIssue:
    """`path` locates the problem by index, e.g. `tasks[1].classes[0].prompts[2]`; "" is the whole document."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _summary(source: str, issues: List[ValidationIssue]) -> str:
    more = len(issues) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {issues[0]}{tail}"


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def _suggest(word: str, choices: Sequence[str]) -> Optional[str]:
    alias = _ALIASES.get(word.lower())
    if alias in choices:
        return alias
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    compact = {c.lower().replace("-", "").replace("_", "").replace(" ", ""): c for c in choices}
    key = word.lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in compact:
        return compact[key]
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


class _Checker:
    def __init__(self):
        self.issues: List[ValidationIssue] = []

    def add(self, path: str, message: str):
        self.issues.append(ValidationIssue(path, message))

    def keys(self, obj: dict, allowed: Sequence[str], path: str, what: str):
        for k in obj:
            if k in allowed:
                continue
            where = f"{path}.{k}" if path else str(k)
            if not isinstance(k, str):
                self.add(where, f"unknown key {k!r} in {what}")
                continue
            hint = _suggest(k, allowed)
            self.add(where, f"unknown key '{k}'" + (f" (did you mean '{hint}'?)" if hint else
                                                     f" in {what} (allowed: {', '.join(allowed)})"))

    def name(self, obj: dict, path: str, what: str) -> Optional[str]:
        where = f"{path}.name" if path else "name"
        if "name" not in obj:
            self.add(where, f"missing: every {what} needs a 'name'")
            return None
        v = obj["name"]
        if not isinstance(v, str):
            self.add(where, f"must be a string, not {_type_name(v)}")
            return None
        if not v.strip():
            self.add(where, "must not be empty")
            return None
        return v

    def optional_str(self, obj: dict, key: str, path: str):
        if key in obj and not isinstance(obj[key], str):
            self.add(f"{path}.{key}" if path else key, f"must be a string, not {_type_name(obj[key])}")

    def strings(self, obj: dict, key: str, path: str, required: bool, empty_msg: str,
                templates: bool = False) -> Optional[List[str]]:
        """Check a list of non-empty strings; returns it when it is a usable list (possibly with bad items)."""
        where = f"{path}.{key}" if path else key
        if key not in obj:
            if required:
                self.add(where, f"missing: {empty_msg}")
            return None
        v = obj[key]
        if isinstance(v, str):
            self.add(where, f"must be a list of strings, not a string (write [{json.dumps(v)}])")
            return None
        if not isinstance(v, list):
            self.add(where, f"must be a list of strings, not {_type_name(v)}")
            return None
        if not v and (required or templates):
            self.add(where, f"must not be empty: {empty_msg}")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                self.add(f"{where}[{i}]", f"must be a string, not {_type_name(item)}")
            elif not item.strip():
                self.add(f"{where}[{i}]", "must not be empty")
            elif templates and item.count(PLACEHOLDER) != 1:
                n = item.count(PLACEHOLDER)
                self.add(f"{where}[{i}]", f"template {json.dumps(item)} must contain exactly one '{{}}' "
                                          f"(the place of the prompt), found {n}")
        return v


def validate(d: Any) -> List[ValidationIssue]:
    """Every problem of a prompt-set document, in document order; empty when valid."""
    ck = _Checker()
    if not isinstance(d, dict):
        ck.add("", f"a prompt set must be an object with 'name' and 'tasks', not {_type_name(d)}")
        return ck.issues
    ck.keys(d, SET_KEYS, "", "a prompt set")
    ck.name(d, "", "prompt set")
    for key in ("title", "description"):
        ck.optional_str(d, key, "")
    if "modality" in d:
        m = d["modality"]
        if not isinstance(m, str):
            ck.add("modality", f"must be a string, not {_type_name(m)}")
        elif m and m not in MODALITIES:
            hint = {"MRI": "MR", "MR": "MR", "CT": "CT"}.get(m.upper())
            ck.add("modality", f"unknown modality '{m}'" + (f" (did you mean '{hint}'?)" if hint else
                                                            f" (use one of: {', '.join(MODALITIES)})"))
    set_tpl = ck.strings(d, "templates", "", required=False, templates=True,
                         empty_msg="omit 'templates' or give at least one, e.g. \"This study shows: {}.\"")
    set_has_tpl = bool(set_tpl)

    if "tasks" not in d:
        ck.add("tasks", "missing: a prompt set needs a list of tasks")
        return ck.issues
    tasks = d["tasks"]
    if not isinstance(tasks, list):
        ck.add("tasks", f"must be a list of tasks, not {_type_name(tasks)}")
        return ck.issues
    if not tasks:
        ck.add("tasks", "must not be empty: a prompt set needs at least one task")
    seen_tasks: Dict[str, int] = {}
    for ti, t in enumerate(tasks):
        tp = f"tasks[{ti}]"
        if not isinstance(t, dict):
            ck.add(tp, f"a task must be an object with 'name', 'kind' and 'classes', not {_type_name(t)}")
            continue
        ck.keys(t, TASK_KEYS, tp, "a task")
        tname = ck.name(t, tp, "task")
        if tname is not None:
            if tname in seen_tasks:
                ck.add(f"{tp}.name", f"duplicate task name '{tname}' (also tasks[{seen_tasks[tname]}])")
            else:
                seen_tasks[tname] = ti
        kind = t.get("kind")
        if "kind" not in t:
            ck.add(f"{tp}.kind", f"missing: give the task kind, one of: {', '.join(KINDS)}")
        elif not isinstance(kind, str):
            ck.add(f"{tp}.kind", f"must be a string, not {_type_name(kind)}")
            kind = None
        elif kind not in KINDS:
            hint = _suggest(kind, KINDS)
            ck.add(f"{tp}.kind", f"unknown task kind '{kind}'" + (f" (did you mean '{hint}'?)" if hint else
                                                                  f" (use one of: {', '.join(KINDS)})"))
            kind = None
        task_tpl = ck.strings(t, "templates", tp, required=False, templates=True,
                              empty_msg="omit 'templates' to use the set's templates, or give at least one")
        task_has_tpl = bool(task_tpl) if "templates" in t else set_has_tpl

        if "classes" not in t:
            ck.add(f"{tp}.classes", "missing: a task needs a list of classes")
            continue
        classes = t["classes"]
        if not isinstance(classes, list):
            ck.add(f"{tp}.classes", f"must be a list of classes, not {_type_name(classes)}")
            continue
        if kind == "multiclass" and len(classes) < 2:
            ck.add(f"{tp}.classes", f"a multiclass task needs at least 2 classes, found {len(classes)} "
                                    "(for a yes/no question use kind 'multilabel' with negative_prompts)")
        elif not classes:
            ck.add(f"{tp}.classes", "must not be empty: a task needs at least one class")
        seen_classes: Dict[str, int] = {}
        untemplated = False
        for ci, c in enumerate(classes):
            cp = f"{tp}.classes[{ci}]"
            if not isinstance(c, dict):
                ck.add(cp, f"a class must be an object with 'name' and 'prompts', not {_type_name(c)}")
                continue
            ck.keys(c, CLASS_KEYS, cp, "a class")
            cname = ck.name(c, cp, "class")
            if cname is not None:
                if cname in seen_classes:
                    ck.add(f"{cp}.name", f"duplicate class name '{cname}' in task "
                                         f"(also {tp}.classes[{seen_classes[cname]}])")
                else:
                    seen_classes[cname] = ci
            ck.strings(c, "prompts", cp, required=True, empty_msg="give at least one prompt")
            if kind == "multilabel":
                ck.strings(c, "negative_prompts", cp, required=True,
                           empty_msg="a class of a multilabel task needs at least one negative prompt, "
                                     "e.g. \"Not <finding>\"")
            elif "negative_prompts" in c:
                got = ck.strings(c, "negative_prompts", cp, required=False, empty_msg="")
                if kind == "multiclass" and got:
                    ck.add(f"{cp}.negative_prompts", "negative prompts are only used in multilabel tasks "
                                                     "(remove them or change the task kind)")
            ck.strings(c, "symptoms", cp, required=False, empty_msg="")
            ck.strings(c, "templates", cp, required=False, templates=True,
                       empty_msg="omit 'templates' to use the task's templates, or give at least one")
            if "templates" not in c and not task_has_tpl:
                untemplated = True
        if untemplated:
            ck.add(f"{tp}.templates", "no template: give 'templates' in the task, at the set level, "
                                      "or in every class")
        if "reference" in t:
            ref = t["reference"]
            if kind == "multilabel":
                ck.add(f"{tp}.reference", "only multiclass tasks take a reference class (a multilabel class's "
                                          "negative prompts already are its reference)")
            elif not isinstance(ref, str):
                ck.add(f"{tp}.reference", f"must be the name of one of the task's classes, not {_type_name(ref)}")
            elif ref not in seen_classes:
                hint = _suggest(ref, list(seen_classes))
                ck.add(f"{tp}.reference", f"'{ref}' is not a class of this task" +
                       (f" (did you mean '{hint}'?)" if hint else f" (classes: {', '.join(seen_classes)})"))
    return ck.issues


# ----------------------------------------------------------------------------------------------------------------
# Files


def builtin_dir() -> Path:
    return resources_dir() / "prompts"


def list_builtin_prompt_sets() -> List[str]:
    folder = builtin_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def _is_yaml(path: Path) -> bool:
    return is_yaml(path)


def _import_yaml(path: Path):
    return import_yaml(path, "prompt set")


def read_document(path: Union[str, Path]) -> Any:
    """Parse a JSON/YAML prompt-set file into plain Python objects (no validation)."""
    return _read_document(path, "prompt set file")


def _resolve(name_or_path: Union[str, os.PathLike]) -> Path:
    s = os.fspath(name_or_path)
    looks_like_name = isinstance(name_or_path, str) and not any(sep in s for sep in ("/", "\\")) \
        and not s.lower().endswith((".json", ".yaml", ".yml"))
    if looks_like_name:
        candidate = builtin_dir() / f"{s}.json"
        if candidate.is_file():
            return candidate
        if not Path(s).exists():
            known = ", ".join(list_builtin_prompt_sets()) or "none found"
            raise ConfigError(f"{s}: no built-in prompt set of that name (built-in: {known}); "
                              "or give the path of a .json/.yaml file")
    return Path(os.path.expanduser(s))


def load_prompt_set(name_or_path: Union[str, os.PathLike]) -> PromptSet:
    """A built-in set by name ("pub_brain_5") or a JSON/YAML file by path."""
    path = _resolve(name_or_path)
    return PromptSet.from_dict(read_document(path), source=str(path))


def dumps(ps: PromptSet) -> str:
    """The canonical JSON text of a set (what `save_prompt_set` writes to a .json file)."""
    return json.dumps(ps.to_dict(), indent=2, ensure_ascii=False) + "\n"


def save_prompt_set(ps: PromptSet, path: Union[str, os.PathLike]) -> Path:
    """Validate, then write atomically (temp file in the same folder + os.replace). YAML for .yaml/.yml."""
    path = Path(os.path.expanduser(os.fspath(path)))
    issues = ps.validate()
    if issues:
        raise ConfigError(_summary(f"{path} (not saved)", issues))
    if _is_yaml(path):
        yaml = _import_yaml(path)
        text = yaml.safe_dump(ps.to_dict(), sort_keys=False, allow_unicode=True, width=1000)
    else:
        text = dumps(ps)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (path.stat().st_mode & 0o777) if path.exists() else 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
