"""The prompt editor's model, free of Qt: a prompt-set document as a tree (set -> templates, tasks -> classes ->
prompts / negative prompts / templates), edits addressed by the same paths HLIPCore's validator uses
(`tasks[1].classes[0].prompts[2]`), and validation issues mapped onto tree items so the panel can mark them in
place. The panel's QTreeWidget is a thin view over `PromptTree.items()`.
"""
import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

from . import ensure_core_on_path

ensure_core_on_path()
from HLIPCore import prompts as core  # noqa: E402  (pure Python, no torch)

_TOKEN = re.compile(r"([A-Za-z_]+)|\[(\d+)\]")
LIST_KEYS = ("templates", "prompts", "negative_prompts", "symptoms")


def parse_path(path: str) -> List[Union[str, int]]:
    return [name if name else int(index) for name, index in _TOKEN.findall(path or "")]


def format_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


@dataclass
class TreeItem:
    path: str                 # document path of the value this item shows/edits ("" = the set)
    kind: str                 # set | templates | template | task | class | prompts | prompt | negative_prompts | ...
    label: str                # what the first column shows
    value: str = ""           # the editable text ('' for group rows)
    editable: bool = False
    children: List["TreeItem"] = field(default_factory=list)
    issues: List[str] = field(default_factory=list)  # validation messages located here


class PromptTree:
    """An editable prompt-set document."""

    def __init__(self, document: dict):
        self.doc = copy.deepcopy(document)

    # -- sources -----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path) -> "PromptTree":
        """A built-in set by name or a JSON/YAML file (raises HLIPCore ConfigError for invalid files)."""
        return cls(core.load_prompt_set(name_or_path).to_dict())

    @classmethod
    def from_text(cls, text: str) -> "PromptTree":
        return cls(json.loads(text))

    @staticmethod
    def builtin_names() -> List[str]:
        return core.list_builtin_prompt_sets()

    def to_text(self) -> str:
        return json.dumps(self.doc, indent=2, ensure_ascii=False)

    def to_prompt_set(self):
        return core.PromptSet.from_dict(self.doc, source="prompt editor")

    def save(self, path) -> Path:
        return core.save_prompt_set(self.to_prompt_set(), path)

    # -- validation --------------------------------------------------------------------------------------------
    def issues(self) -> List["core.ValidationIssue"]:
        return core.validate(self.doc)

    def issues_by_path(self) -> Dict[str, List[str]]:
        """Validation messages keyed by the path of the nearest tree item that exists."""
        return self.issues_by_path_for(self.tree())

    # -- edits -------------------------------------------------------------------------------------------------
    def get(self, path: str):
        node = self.doc
        for part in parse_path(path):
            node = node[part]
        return node

    def set(self, path: str, value) -> None:
        parts = parse_path(path)
        parent = self.get(format_path(parts[:-1]))
        parent[parts[-1]] = value

    def remove(self, path: str) -> None:
        parts = parse_path(path)
        parent = self.get(format_path(parts[:-1]))
        if parts[-2:-1] == ["classes"]:  # removing a task's reference class removes the reference too
            task = self.get(format_path(parts[:-2]))
            removed = parent[parts[-1]]
            if isinstance(removed, dict) and task.get("reference") == removed.get("name"):
                del task["reference"]
        del parent[parts[-1]]
        if isinstance(parent, list) and not parent and parts[-2] in ("templates", "negative_prompts", "symptoms") \
                and len(parts) > 2:
            del self.get(format_path(parts[:-2]))[parts[-2]]  # an emptied optional list goes away

    def add_task(self, name: str = "new task", kind: str = "multiclass") -> str:
        tasks = self.doc.setdefault("tasks", [])
        tasks.append({"name": name, "kind": kind, "classes": []})
        return f"tasks[{len(tasks) - 1}]"

    def add_class(self, task_path: str, name: str = "new class", prompt: str = "") -> str:
        classes = self.get(task_path).setdefault("classes", [])
        entry = {"name": name, "prompts": [prompt or name]}
        if self.get(task_path).get("kind") == "multilabel":
            entry["negative_prompts"] = [f"No {prompt or name}"]
        classes.append(entry)
        return f"{task_path}.classes[{len(classes) - 1}]"

    def add_text(self, owner_path: str, key: str, text: str) -> str:
        """Appends a prompt/negative prompt/template/symptom to the set, a task or a class."""
        values = self.get(owner_path).setdefault(key, []) if owner_path else self.doc.setdefault(key, [])
        values.append(text)
        prefix = f"{owner_path}." if owner_path else ""
        return f"{prefix}{key}[{len(values) - 1}]"

    # -- the tree ----------------------------------------------------------------------------------------------
    def tree(self) -> TreeItem:
        d = self.doc if isinstance(self.doc, dict) else {}
        root = TreeItem("", "set", "Prompt set", str(d.get("name", "")), editable=True)
        root.children.append(self._list("templates", "templates", "Templates", d.get("templates")))
        for t, task in enumerate(d.get("tasks") or []):
            tp = f"tasks[{t}]"
            task = task if isinstance(task, dict) else {}
            item = TreeItem(tp, "task", f"Task ({task.get('kind', '?')})", str(task.get("name", "")), editable=True)
            if "templates" in task:
                item.children.append(self._list(f"{tp}.templates", "templates", "Templates", task.get("templates")))
            for c, cls in enumerate(task.get("classes") or []):
                cp = f"{tp}.classes[{c}]"
                cls = cls if isinstance(cls, dict) else {}
                citem = TreeItem(cp, "class", "Class", str(cls.get("name", "")), editable=True)
                for key, label in (("prompts", "Prompts"), ("negative_prompts", "Negative prompts"),
                                   ("templates", "Templates")):
                    if key in cls or key == "prompts":
                        citem.children.append(self._list(f"{cp}.{key}", key, label, cls.get(key)))
                item.children.append(citem)
            root.children.append(item)
        issues = self.issues_by_path_for(root)
        for item in self._walk(root):
            item.issues = issues.get(item.path, [])
        return root

    def issues_by_path_for(self, root: TreeItem) -> Dict[str, List[str]]:
        paths = {item.path for item in self._walk(root)}
        located: Dict[str, List[str]] = {}
        for issue in self.issues():
            parts = parse_path(issue.path)
            while parts and format_path(parts) not in paths:
                parts = parts[:-1]
            located.setdefault(format_path(parts), []).append(issue.message)
        return located

    def _list(self, path: str, kind: str, label: str, values) -> TreeItem:
        group = TreeItem(path, kind, label)
        singular = {"templates": "template", "prompts": "prompt", "negative_prompts": "negative prompt"}[kind]
        for n, value in enumerate(values if isinstance(values, list) else []):
            group.children.append(TreeItem(f"{path}[{n}]", singular, singular.capitalize(), str(value),
                                           editable=True))
        return group

    @staticmethod
    def _walk(item: TreeItem):
        yield item
        for child in item.children:
            yield from PromptTree._walk(child)

    def items(self) -> List[TreeItem]:
        return list(self._walk(self.tree()))

    def edit(self, path: str, kind: str, text: str) -> None:
        """An edit made in the tree: a name or a string in a list."""
        if kind == "class":  # a renamed reference class stays the task's reference
            parts = parse_path(path)
            task = self.get(format_path(parts[:-2]))
            renamed = self.get(path)
            if task.get("reference") is not None and isinstance(renamed, dict) \
                    and task.get("reference") == renamed.get("name"):
                task["reference"] = text
        if kind in ("set", "task", "class"):
            self.set(f"{path}.name" if path else "name", text)
        else:
            self.set(path, text)
