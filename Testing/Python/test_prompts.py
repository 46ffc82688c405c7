"""Prompt sets: format, validation messages, round trips, fingerprints and the built-in sets' strings."""
import ast
import copy
import json
import subprocess
from pathlib import Path

import pytest

from HLIPCore.errors import ConfigError
from HLIPCore.paths import resources_dir
from HLIPCore.prompts import (ClassPrompts, PromptSet, Task, ValidationIssue, dumps, list_builtin_prompt_sets,
                              load_prompt_set, save_prompt_set, validate)

BUILTINS = ["ct_rate", "ct_rate_organ", "head_ct", "pub_brain_5", "rad_chestct", "rad_chestct_organ"]
MIRROR = Path("/work/.mirror/Zch0414+hlip/repo")


def minimal():
    return {
        "name": "t",
        "templates": ["A {}."],
        "tasks": [
            {"name": "mc", "kind": "multiclass", "classes": [
                {"name": "A", "prompts": ["a"]},
                {"name": "B", "prompts": ["b"]}]},
            {"name": "ml", "kind": "multilabel", "classes": [
                {"name": "X", "prompts": ["x"], "negative_prompts": ["not x"]}]},
        ],
    }


def issues_of(d):
    return [(i.path, i.message) for i in validate(d)]


def paths_of(d):
    return [i.path for i in validate(d)]


# ------------------------------------------------------------------------------------------------ built-in sets

def test_builtin_list():
    assert set(BUILTINS) <= set(list_builtin_prompt_sets())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_validates_and_is_canonical(name):
    path = resources_dir() / "prompts" / f"{name}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert validate(doc) == []
    ps = load_prompt_set(name)
    assert ps.name == name
    assert ps.to_dict() == doc
    assert dumps(ps) == path.read_text(encoding="utf-8")  # files are in the canonical form the GUI saves
    assert ps.modality in ("MR", "CT")
    for task in ps.tasks:
        tt = ps.task_templates(task)
        for c in task.classes:
            assert c.texts(tt)
            if task.kind == "multilabel":
                assert c.negative_texts(tt)


def test_pub_brain_5_exact_strings():
    ps = load_prompt_set("pub_brain_5")
    assert ps.templates == ["This MRI study shows: {}."]
    assert ps.task_names() == ["disease", "tumor", "stroke_detection", "glioma_detection",
                               "meningioma_detection", "metastasis_detection"]
    disease = ps.task("disease")
    assert disease.kind == "multiclass"
    assert disease.class_names() == ["Normal", "Stroke", "Glioma", "Meningioma", "Metastasis"]
    assert [c.texts(ps.templates) for c in disease.classes] == [
        ["This MRI study shows: No significant abnormalities."], ["This MRI study shows: Acute stroke."],
        ["This MRI study shows: Glioma."], ["This MRI study shows: Meningioma."],
        ["This MRI study shows: Metastasis."]]
    assert ps.task("tumor").class_names() == ["Glioma", "Meningioma", "Metastasis"]
    for d in ("Stroke", "Glioma", "Meningioma", "Metastasis"):
        assert ps.task(f"{d.lower()}_detection").class_names() == ["Normal", d]
    for task in ps.tasks:
        for c in task.classes:
            assert len(c.symptoms) == 4
            assert c.symptoms == disease.cls(c.name).symptoms  # same class, same descriptions in every task


def test_ct_rate_exact_strings():
    ps = load_prompt_set("ct_rate")
    assert ps.templates == ["The volume shows: {}."]
    findings = ps.task("findings")
    assert findings.kind == "multilabel" and len(findings.classes) == 16
    assert findings.class_names()[:4] == ["Emphysema", "Atelectasis", "Lung nodule", "Lung opacity"]
    assert findings.cls("Atelectasis").negative_prompts == ["Not atelectatic"]
    assert findings.class_index("Lung nodule") == 2  # the column of its scores
    with pytest.raises(KeyError, match="no class 'Nodule' .*Lung nodule"):
        findings.class_index("Nodule")
    assert findings.cls("Lung nodule").prompts == ["Lung nodule"]  # the volume-template substitution
    assert findings.cls("Lung nodule").negative_prompts == ["Not lung nodule"]
    assert findings.cls("Lung opacity").negative_prompts == ["Not lung opacity"]
    c = findings.cls("Coronary artery wall calcification")
    assert c.texts(ps.templates) == ["The volume shows: Coronary artery wall calcification."]
    assert c.negative_texts(ps.templates) == ["The volume shows: Not coronary artery wall calcification."]
    extra = ps.task("extra_findings")
    assert extra.class_names() == ["Medical material", "Lymphadenopathy"]
    assert len(findings.classes) + len(extra.classes) == 18

    organ = load_prompt_set("ct_rate_organ")
    assert organ.templates == []
    of = organ.task("findings")
    assert of.class_names() == findings.class_names()
    assert of.cls("Lung nodule").texts(organ.task_templates(of)) == ["The lung shows: Nodule."]
    assert of.cls("Lung nodule").negative_texts([]) == ["The lung shows: Not nodule."]
    assert of.cls("Hiatal hernia").texts([]) == ["The esophagus shows: Hiatal hernia."]
    assert of.cls("Arterial wall calcification").texts([]) == ["The aorta shows: Arterial wall calcification."]
    assert of.cls("Cardiomegaly").texts([]) == ["The heart shows: Cardiomegaly."]


def test_rad_chestct_strings():
    ps = load_prompt_set("rad_chestct")
    names = ps.task("findings").class_names()
    assert len(names) == 15 and "Mosaic attenuation pattern" not in names
    assert {"Coronary artery wall calcification", "Arterial wall calcification"} <= set(names)
    ct_rate = load_prompt_set("ct_rate").task("findings")
    for c in ps.task("findings").classes:
        assert (c.prompts, c.negative_prompts) == (ct_rate.cls(c.name).prompts, ct_rate.cls(c.name).negative_prompts)


def test_head_ct_contents():
    ps = load_prompt_set("head_ct")
    names = ps.task("findings").class_names()
    for needed in ("Intracranial hemorrhage", "Intraparenchymal hemorrhage", "Intraventricular hemorrhage",
                   "Subdural hemorrhage", "Epidural hemorrhage", "Subarachnoid hemorrhage", "Calvarial fracture",
                   "Mass effect", "Midline shift"):
        assert needed in names


# ------------------------------------------------------------------- against the reference code, when present

def _git_show(rel):
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{rel}"], check=True, capture_output=True,
                          text=True).stdout


def _reference_metadata(rel):
    """CLASSNAMES / ORGANS / PROMPTS / TEMPLATES of a reference metadata module, read with ast (never executed).
    Template lambdas `lambda c: f'...{c}...'` become '...{}...'."""
    out = {}
    for node in ast.parse(_git_show(rel)).body:
        if not isinstance(node, ast.Assign):
            continue
        name = node.targets[0].id
        if name == "TEMPLATES":
            tpl = {}
            for k, v in zip(node.value.keys, node.value.values):
                items = []
                for lam in v.elts:
                    parts = [p.value if isinstance(p, ast.Constant) else "{}" for p in lam.body.values]
                    items.append("".join(parts))
                tpl[k.value] = items
            out[name] = tpl
        else:
            out[name] = ast.literal_eval(node.value)
    return out


needs_mirror = pytest.mark.skipif(not (MIRROR / "HEAD").exists(), reason="HLIP reference mirror not present")


@needs_mirror
def test_pub_brain_5_matches_reference():
    ref = _reference_metadata("src/hlip/zeroshot_metadata_pub_brain_5.py")
    ps = load_prompt_set("pub_brain_5")
    assert ps.templates == ref["TEMPLATES"]["template"]
    disease = ps.task("disease")
    assert disease.class_names() == ref["CLASSNAMES"]
    assert [c.prompts[0] for c in disease.classes] == list(ref["PROMPTS"]["prompt"])
    assert all(len(c.prompts) == 1 for t in ps.tasks for c in t.classes)
    prompt_of = dict(zip(ref["CLASSNAMES"], ref["PROMPTS"]["prompt"]))
    for t in ps.tasks:
        assert t.templates is None
        for c in t.classes:
            assert c.prompts == [prompt_of[c.name]]


@needs_mirror
@pytest.mark.parametrize("dataset,labels_csv", [
    ("ct_rate", "data/ct_rate/metafiles/valid_labels.csv"),
    ("rad_chestct", "data/rad_chestct/files/rad_chestct_labels.csv"),
])
def test_chest_sets_match_reference(dataset, labels_csv):
    ref = _reference_metadata(f"src/hlip/zeroshot_metadata_{dataset}.py")
    header = _git_show(labels_csv).splitlines()[0].split(",")[1:]
    # volume (default): the evaluation scripts replace two pairs when the template is not 'organ'
    volume_prompts = dict(ref["PROMPTS"], **{"Lung nodule": ("Not lung nodule", "Lung nodule"),
                                             "Lung opacity": ("Not lung opacity", "Lung opacity")})
    for suffix, organ in (("", False), ("_organ", True)):
        ps = load_prompt_set(dataset + suffix)
        findings = ps.task("findings")
        assert findings.class_names() == ref["CLASSNAMES"]
        assert set(findings.class_names()) <= set(header)
        for c in findings.classes:
            neg, pos = ref["PROMPTS"][c.name] if organ else volume_prompts[c.name]
            assert (c.negative_prompts, c.prompts) == ([neg], [pos])
            want_tpl = ref["TEMPLATES"][ref["ORGANS"][c.name]] if organ else ref["TEMPLATES"]["volume"]
            assert c.effective_templates(ps.task_templates(findings)) == want_tpl
    if dataset == "ct_rate":  # the full label set: reference's 16 + our two extras = the CSV's 18
        ps = load_prompt_set("ct_rate")
        all_names = [c.name for t in ps.tasks for c in t.classes]
        assert sorted(all_names) == sorted(header) and len(header) == 18


# ---------------------------------------------------------------------------------------- round trips, files

def test_round_trip_dict_and_files(tmp_path):
    for name in BUILTINS:
        ps = load_prompt_set(name)
        again = PromptSet.from_dict(copy.deepcopy(ps.to_dict()))
        assert again == ps
        out = save_prompt_set(ps, tmp_path / f"{name}.json")
        assert load_prompt_set(out) == ps
        assert load_prompt_set(str(out)) == ps


def test_round_trip_of_edits(tmp_path):
    ps = PromptSet.from_dict(minimal())
    ps.task("mc").classes.append(ClassPrompts("C", ["c", "cc"], symptoms=["round", "bright"], templates=["C {}"]))
    ps.tasks.append(Task("new", "multilabel", [ClassPrompts("Y", ["y"], negative_prompts=["no y"])], ["Y: {}"]))
    ps.title, ps.description, ps.modality = "Title", "Desc", "CT"
    assert ps.validate() == []
    path = save_prompt_set(ps, tmp_path / "sub" / "edited.json")
    assert load_prompt_set(path) == ps
    assert json.loads(path.read_text()) == ps.to_dict()
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind
    assert (path.stat().st_mode & 0o777) == 0o644


def test_save_refuses_invalid(tmp_path):
    ps = PromptSet.from_dict(minimal())
    ps.task("ml").classes[0].negative_prompts = []
    target = tmp_path / "bad.json"
    with pytest.raises(ConfigError, match=r"not saved.*tasks\[1\]\.classes\[0\]\.negative_prompts"):
        save_prompt_set(ps, target)
    assert not target.exists()


def test_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    ps = load_prompt_set("pub_brain_5")
    out = save_prompt_set(ps, tmp_path / "set.yaml")
    assert load_prompt_set(out) == ps
    hand = tmp_path / "hand.yml"
    hand.write_text(yaml.safe_dump(minimal()))
    assert load_prompt_set(hand) == PromptSet.from_dict(minimal())
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_prompt_set(bad)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="no built-in prompt set.*pub_brain_5"):
        load_prompt_set("no_such_set")
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_set(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",\n "tasks": [}')
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON: .* line 2"):
        load_prompt_set(broken)
    typo = tmp_path / "typo.json"
    d = minimal()
    d["tasks"][0]["classes"][1]["prompt"] = d["tasks"][0]["classes"][1].pop("prompts")
    d["tasks"][1]["kind"] = "multi"
    typo.write_text(json.dumps(d))
    with pytest.raises(ConfigError) as err:
        load_prompt_set(str(typo))
    msg = str(err.value)
    assert msg.startswith(f"{typo}: tasks[0].classes[1].prompt: unknown key 'prompt' (did you mean 'prompts'?)")
    assert msg.endswith("(and 2 more problems)")  # missing 'prompts'; unknown kind
    assert "\n" not in msg


# ----------------------------------------------------------------------------------------------- fingerprints

def test_fingerprint():
    base = PromptSet.from_dict(minimal())
    fp = base.fingerprint()
    assert len(fp) == 64 and fp == PromptSet.from_dict(minimal()).fingerprint()

    cosmetic = PromptSet.from_dict(minimal())
    cosmetic.title, cosmetic.description, cosmetic.modality, cosmetic.name = "T", "D", "MR", "other"
    assert cosmetic.fingerprint() == fp

    def changed(edit):
        ps = PromptSet.from_dict(minimal())
        edit(ps)
        assert ps.validate() == []
        return ps.fingerprint()

    variants = [
        lambda ps: ps.task("mc").classes[0].prompts.__setitem__(0, "a2"),
        lambda ps: ps.task("ml").classes[0].negative_prompts.append("no x"),
        lambda ps: ps.templates.__setitem__(0, "The {}."),
        lambda ps: setattr(ps.task("mc"), "templates", ["B {}."]),
        lambda ps: setattr(ps.task("mc").classes[1], "templates", ["B {}."]),
        lambda ps: ps.task("mc").classes[0].symptoms.append("bright"),
        lambda ps: setattr(ps.task("mc").classes[0], "name", "A2"),
        lambda ps: ps.task("mc").classes.reverse(),
    ]
    fps = [changed(v) for v in variants]
    assert fp not in fps and len(set(fps)) == len(fps)

    # only the sentences count, not how a template is inherited
    explicit = PromptSet.from_dict(minimal())
    explicit.task("mc").templates = ["A {}."]
    assert explicit.fingerprint() == fp


# ---------------------------------------------------------------------------------------- template expansion

def test_template_expansion_order_and_precedence():
    c = ClassPrompts("C", ["p1", "p2"], negative_prompts=["n1"])
    assert c.texts(["T1 {}.", "T2: {}"]) == ["T1 p1.", "T2: p1", "T1 p2.", "T2: p2"]
    assert c.negative_texts(["T1 {}.", "T2: {}"]) == ["T1 n1.", "T2: n1"]
    assert ClassPrompts("C", ["a {x}"]).texts(["{} {{literal}}"]) == ["a {x} {{literal}}"]  # no str.format
    t = Task("t", "multilabel", [c])
    assert t.effective_templates(["S {}"]) == ["S {}"]
    t.templates = ["K {}"]
    assert t.effective_templates(["S {}"]) == ["K {}"]
    c.templates = ["C {}"]
    assert c.texts(t.effective_templates(["S {}"])) == ["C p1", "C p2"]


def test_task_lookup():
    ps = PromptSet.from_dict(minimal())
    assert ps.task("ml").kind == "multilabel"
    with pytest.raises(KeyError, match="tasks: mc, ml"):
        ps.task("nope")
    with pytest.raises(KeyError, match="classes: A, B"):
        ps.task("mc").cls("Z")


# ------------------------------------------------------------------------------------------------ validation

def test_minimal_is_valid():
    assert validate(minimal()) == []
    assert isinstance(PromptSet.from_dict(minimal()), PromptSet)


def _mutated(edit):
    d = minimal()
    edit(d)
    return d


CASES = [
    # (edit, expected path, message fragment)
    (lambda d: d.pop("name"), "name", "missing"),
    (lambda d: d.__setitem__("name", "  "), "name", "must not be empty"),
    (lambda d: d.__setitem__("name", 3), "name", "must be a string, not a number"),
    (lambda d: d.__setitem__("title", ["x"]), "title", "must be a string, not a list"),
    (lambda d: d.__setitem__("modality", "MRI"), "modality", "did you mean 'MR'?"),
    (lambda d: d.__setitem__("modality", "PET"), "modality", "use one of: MR, CT"),
    (lambda d: d.pop("tasks"), "tasks", "missing"),
    (lambda d: d.__setitem__("tasks", []), "tasks", "must not be empty"),
    (lambda d: d.__setitem__("tasks", {"a": 1}), "tasks", "must be a list of tasks, not an object"),
    (lambda d: d["tasks"].append("task"), "tasks[2]", "a task must be an object"),
    (lambda d: d.__setitem__("templates", []), "templates", "must not be empty"),
    (lambda d: d.__setitem__("templates", "A {}."), "templates", "not a string (write [\"A {}.\"])"),
    (lambda d: d.__setitem__("templates", ["no placeholder"]), "templates[0]", "exactly one '{}'"),
    (lambda d: d.__setitem__("templates", ["A {}.", "{} and {}"]), "templates[1]", "found 2"),
    (lambda d: d.__setitem__("templates", [None]), "templates[0]", "must be a string, not null"),
    (lambda d: d["tasks"][0].__setitem__("templates", ["{x}"]), "tasks[0].templates[0]", "exactly one '{}'"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("templates", ["x"]),
     "tasks[0].classes[0].templates[0]", "exactly one '{}'"),
    (lambda d: d["tasks"][0].__setitem__("templates", []), "tasks[0].templates", "must not be empty"),
    (lambda d: d["tasks"][1].pop("name"), "tasks[1].name", "missing"),
    (lambda d: d["tasks"][1].__setitem__("name", "mc"), "tasks[1].name", "duplicate task name 'mc' (also tasks[0])"),
    (lambda d: d["tasks"][0].pop("kind"), "tasks[0].kind", "missing"),
    (lambda d: d["tasks"][0].__setitem__("kind", "softmax"), "tasks[0].kind", "unknown task kind 'softmax'"),
    (lambda d: d["tasks"][0].__setitem__("kind", "multi-label"), "tasks[0].kind", "did you mean 'multilabel'?"),
    (lambda d: d["tasks"][0].__setitem__("kind", 2), "tasks[0].kind", "must be a string"),
    (lambda d: d["tasks"][0].pop("classes"), "tasks[0].classes", "missing"),
    (lambda d: d["tasks"][0].__setitem__("classes", "A"), "tasks[0].classes", "must be a list"),
    (lambda d: d["tasks"][0]["classes"].pop(), "tasks[0].classes", "at least 2 classes, found 1"),
    (lambda d: d["tasks"][1].__setitem__("classes", []), "tasks[1].classes", "must not be empty"),
    (lambda d: d["tasks"][0]["classes"].append(["x"]), "tasks[0].classes[2]", "a class must be an object"),
    (lambda d: d["tasks"][0]["classes"][1].__setitem__("name", "A"), "tasks[0].classes[1].name",
     "duplicate class name 'A'"),
    (lambda d: d["tasks"][0]["classes"][1].pop("name"), "tasks[0].classes[1].name", "missing"),
    (lambda d: d["tasks"][0]["classes"][1].pop("prompts"), "tasks[0].classes[1].prompts", "missing"),
    (lambda d: d["tasks"][0]["classes"][1].__setitem__("prompts", []), "tasks[0].classes[1].prompts",
     "must not be empty"),
    (lambda d: d["tasks"][0]["classes"][1].__setitem__("prompts", ["b", ""]), "tasks[0].classes[1].prompts[1]",
     "must not be empty"),
    (lambda d: d["tasks"][0]["classes"][1].__setitem__("prompts", ["b", 7]), "tasks[0].classes[1].prompts[1]",
     "must be a string, not a number"),
    (lambda d: d["tasks"][1]["classes"][0].pop("negative_prompts"), "tasks[1].classes[0].negative_prompts",
     "needs at least one negative prompt"),
    (lambda d: d["tasks"][1]["classes"][0].__setitem__("negative_prompts", []),
     "tasks[1].classes[0].negative_prompts", "must not be empty"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("negative_prompts", ["not a"]),
     "tasks[0].classes[0].negative_prompts", "only used in multilabel tasks"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("symptoms", "round"), "tasks[0].classes[0].symptoms",
     "must be a list of strings"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("symptoms", ["ok", 1]),
     "tasks[0].classes[0].symptoms[1]", "must be a string"),
    (lambda d: d.pop("templates"), "tasks[0].templates", "no template"),
    (lambda d: d.__setitem__("prompts", []), "prompts", "unknown key 'prompts'"),
    (lambda d: d.__setitem__("template", ["A {}"]), "template", "(did you mean 'templates'?)"),
    (lambda d: d["tasks"][0].__setitem__("type", "multiclass"), "tasks[0].type", "(did you mean 'kind'?)"),
    (lambda d: d["tasks"][1]["classes"][0].__setitem__("negative", ["n"]), "tasks[1].classes[0].negative",
     "(did you mean 'negative_prompts'?)"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("symptom", ["s"]), "tasks[0].classes[0].symptom",
     "(did you mean 'symptoms'?)"),
    (lambda d: d["tasks"][0]["classes"][0].__setitem__("colour", "red"), "tasks[0].classes[0].colour",
     "allowed: name, prompts, negative_prompts, templates, symptoms"),
    (lambda d: d["tasks"][0].__setitem__("reference", "a"), "tasks[0].reference", "(did you mean 'A'?)"),
    (lambda d: d["tasks"][0].__setitem__("reference", "Normal"), "tasks[0].reference",
     "'Normal' is not a class of this task (classes: A, B)"),
    (lambda d: d["tasks"][0].__setitem__("reference", 1), "tasks[0].reference", "must be the name of one"),
    (lambda d: d["tasks"][1].__setitem__("reference", "Y"), "tasks[1].reference", "only multiclass tasks"),
]


@pytest.mark.parametrize("edit,path,fragment", CASES, ids=[f"{i:02d}-{c[1]}" for i, c in enumerate(CASES)])
def test_validation_rule(edit, path, fragment):
    found = issues_of(_mutated(edit))
    assert any(p == path and fragment in m for p, m in found), found
    with pytest.raises(ConfigError, match="^here: "):
        PromptSet.from_dict(_mutated(edit), source="here")


def test_unknown_key_prompt_message_exact():
    d = minimal()
    d["tasks"][0]["classes"][0]["prompt"] = d["tasks"][0]["classes"][0].pop("prompts")
    found = validate(d)
    assert found[0] == ValidationIssue("tasks[0].classes[0].prompt", "unknown key 'prompt' (did you mean 'prompts'?)")
    assert found[1].path == "tasks[0].classes[0].prompts"
    assert str(found[0]) == "tasks[0].classes[0].prompt: unknown key 'prompt' (did you mean 'prompts'?)"


def test_not_an_object():
    assert issues_of([1, 2])[0][0] == ""
    with pytest.raises(ConfigError, match=r"^src: a prompt set must be an object"):
        PromptSet.from_dict(None, source="src")


def test_class_templates_make_set_templates_optional():
    d = minimal()
    d.pop("templates")
    d["tasks"][0]["templates"] = ["M {}"]
    d["tasks"][1]["classes"][0]["templates"] = ["X {}"]
    assert validate(d) == []
    ps = PromptSet.from_dict(d)
    assert ps.to_dict() == d
    assert ps.task("ml").classes[0].texts(ps.task_templates("ml")) == ["X x"]
