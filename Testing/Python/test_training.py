"""Training end to end on a tiny model: loss goes down, exact resume, SIGKILL + resume, 2 processes == 1 process,
accumulation == one large batch, final/ loads with create_model, and `hlip eval` on it."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from HLIPCore.training.config import TrainConfig, load_config
from HLIPCore.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("normal", "glioma", "stroke", "meningioma")
REPORTS = {"normal": "No significant abnormalities. Normal brain.",
           "glioma": "Large glioma in the left frontal lobe with edema.",
           "stroke": "Acute stroke in the right frontal lobe.",
           "meningioma": "Small meningioma with enhancement."}
PREPROCESS = {"mode": "mri", "img_size": [16, 64, 64], "resize_hw": 64}


def _volume(rng, label, shape=(12, 40, 40)):
    """A smooth head-like blob; each label puts a bright or dark spot in its own place, so image and text relate."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = 100.0 * (x ** 2 + y ** 2 + z ** 2 < 0.8) + rng.normal(0, 5, shape)
    spot = {"normal": None, "glioma": (0.0, -0.4, -0.4), "stroke": (0.0, 0.4, 0.4), "meningioma": (0.3, 0.0, 0.5)}
    if spot[label] is not None:
        cz, cy, cx = spot[label]
        vol += 150.0 * ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < 0.08)
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 studies (2-3 NIfTI scans each) with reports and labels, a JSONL manifest, a shared study cache."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    lines = []
    for i, label in enumerate(LABELS):
        folder = root / "studies" / f"s{i}"
        folder.mkdir(parents=True)
        for j in range(2 + i % 2):
            affine = np.diag([1.5, 1.5, 4.0, 1.0])
            nib.save(nib.Nifti1Image(_volume(rng, label).transpose(2, 1, 0), affine), folder / f"scan{j}.nii.gz")
        lines.append({"study": f"studies/s{i}", "report": REPORTS[label], "label": label})
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def _config(data, out, **changes) -> TrainConfig:
    base = dict(model="tiny_multiscan_h3", tokenizer="build", train_manifest=str(data / "manifest.jsonl"),
                cache_dir=str(data / "cache"), output_dir=str(out), preprocess=PREPROCESS, steps=6, batch_size=2,
                lr=1e-3, warmup=1, max_scans_train=3, save_every_steps=100, seed=3)
    base.update(changes)
    return TrainConfig(**base)


# Text dropout masks depend on the batch shape, so runs that split a batch differently only agree without it.
NO_TEXT_DROPOUT = {"text_cfg": {"hf_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}}
# A BERT from scratch with the default init (0.02) gives every report the same [CLS] feature; training then
# needs many steps to leave the uniform-loss plateau. A larger init makes a few steps enough.
# Adam divides by sqrt(v): float-rounding differences in near-zero gradients become weight differences of ~1% of
# a step. At this rate a step moves weights by ~1e-4, 10x the 1e-5 tolerance, and rounding stays below it.
EQUIVALENCE_LR = 1e-4
LEARNABLE_TEXT = {"text_cfg": {"hf_config": {"initializer_range": 0.5, "hidden_dropout_prob": 0.0,
                                             "attention_probs_dropout_prob": 0.0}}}


def _run(cfg, **kw):
    trainer = Trainer(cfg, progress=False, **kw)
    rows = trainer.train()
    return trainer, [r["loss"] for r in rows]


def _logged_losses(out: Path) -> dict:
    with open(out / "log.csv", newline="") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def test_config_errors_name_the_key(tmp_path):
    from HLIPCore.errors import ConfigError
    (tmp_path / "c.yaml").write_text("train_manifst: m.jsonl\n")
    with pytest.raises(ConfigError, match="unknown key 'train_manifst'.*did you mean 'train_manifest'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="'batch_size'"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="'token_loss_core_threshold'"):
        TrainConfig(token_loss_core_threshold=0)
    with pytest.raises(ConfigError, match="'preprocess.img_sise'"):
        TrainConfig(preprocess={"img_sise": [1, 2, 3]})
    (tmp_path / "c.yaml").write_text("train_manifest: data/m.jsonl\nsteps: 5\nbetas: [0.9, 0.95]\n")
    cfg = load_config(tmp_path / "c.yaml", {"lr": 0.01})
    assert cfg.train_manifest == str((tmp_path / "data/m.jsonl").resolve()) and cfg.lr == 0.01
    assert cfg.betas == (0.9, 0.95)


def test_several_training_manifests_are_joined(data, tmp_path):
    """A list of manifests (two phantom sets, say): paths relative to the config file, studies of all of them."""
    from HLIPCore.errors import ConfigError
    (tmp_path / "c.yaml").write_text(f"train_manifest: [{data / 'manifest.jsonl'}, other/m.jsonl]\nsteps: 1\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train_manifest == [str(data / "manifest.jsonl"), str((tmp_path / "other/m.jsonl").resolve())]
    with pytest.raises(ConfigError, match="'train_manifest'"):
        TrainConfig(train_manifest=["a.jsonl", 3])
    twice = Trainer(_config(data, tmp_path / "run", train_manifest=[str(data / "manifest.jsonl")] * 2),
                    resume=None, progress=False)
    assert [e.label for e in twice.entries] == list(LABELS) * 2


def test_learning_rates_written_without_a_dot_are_numbers(tmp_path):
    """PyYAML alone reads `5e-4` as the string '5e-4' (YAML 1.1), which the config would then reject."""
    from HLIPCore.training.config import parse_overrides
    (tmp_path / "c.yaml").write_text("train_manifest: m.jsonl\nsteps: 5\nlr: 5e-4\nwd: 1E-2\nmodel_id: run1\n")
    cfg = load_config(tmp_path / "c.yaml", parse_overrides(["warmup=10", "eps=1e-8"]))
    assert (cfg.lr, cfg.wd, cfg.eps, cfg.warmup, cfg.model_id) == (5e-4, 1e-2, 1e-8, 10, "run1")


def test_parameter_groups_follow_the_reference(tiny_model):
    from HLIPCore.training.optim import cosine_lr, param_groups
    groups = param_groups(tiny_model, 0.2)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert {"logit_scale", "visual.trunk.cls_token"} <= no_decay
    assert "visual.trunk.spatial_posemb" not in decay | no_decay  # frozen: in no group
    assert all(p.ndim >= 2 and "bias" not in n for n, p in tiny_model.named_parameters() if n in decay)
    assert "visual.head.proj.weight" in decay and "text.proj.weight" in decay
    assert cosine_lr(0, 1.0, 4, 10) == 0.25 and cosine_lr(4, 1.0, 4, 10) == 1.0
    assert abs(cosine_lr(10, 1.0, 4, 10)) < 1e-12


def test_loss_decreases_and_final_model_loads(data, tmp_path):
    from HLIPCore.model import create_model, create_tokenizer
    cfg = _config(data, tmp_path / "run", steps=16, batch_size=4, augment=False, precision="bf16", warmup=5,
                  grad_checkpointing=True, patch_dropout=0.25, model_overrides=LEARNABLE_TEXT)
    trainer, losses = _run(cfg)
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    final = tmp_path / "run" / "final"
    model = create_model(final)
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    ids = create_tokenizer(final)(["acute stroke"])
    assert ids[0, 0].item() == 2 and model.encode_text(ids).shape == (1, 32)
    meta = json.loads((final / "config.json").read_text())
    assert meta["model_cfg"]["preprocess"]["img_size"] == [16, 64, 64]


def test_resume_is_bit_exact(data, tmp_path):
    changes = dict(batch_size=1, accum_steps=2, patch_dropout=0.25, steps=6,  # augmentation + dropouts on
                   text_word_dropout=0.3)
    whole, whole_losses = _run(_config(data, tmp_path / "whole", **changes))
    first = Trainer(_config(data, tmp_path / "split", **changes), progress=False)
    part = [r["loss"] for r in first.train(stop_after=3)]
    assert (tmp_path / "split/checkpoints/step_000003.pt").is_file()
    del first
    second = Trainer(_config(data, tmp_path / "split", **changes), progress=False)  # fresh objects, latest.pt
    assert second.step == 3
    rest = [r["loss"] for r in second.train()]
    assert part + rest == whole_losses
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(whole.optimizer.state_dict()["state"].values(), second.optimizer.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(_logged_losses(tmp_path / "split")) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("label_positives", [False, True])
def test_accumulation_equals_one_large_batch(data, tmp_path, monkeypatch, label_positives):
    import HLIPCore.model.vision as vision
    original = vision.resample_sequential  # random scan positions differ per forward pass: take them fixed
    monkeypatch.setattr(vision, "resample_sequential", lambda p, n, training: original(p, n, False))
    changes = dict(model_overrides=NO_TEXT_DROPOUT, steps=2, lr=EQUIVALENCE_LR)
    size = 4
    if label_positives:  # every label twice (other words) and a batch of all 8 studies: same-label pairs
        rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
        again = tmp_path / "again.jsonl"
        again.write_text("".join(json.dumps({**r, "study": str(data / r["study"]), "report": "Seen again. "
                                             + r["report"]}) + "\n" for r in rows))
        changes.update(clip_label_positives=True, train_manifest=[str(data / "manifest.jsonl"), str(again)],
                       model_overrides=LEARNABLE_TEXT)  # reports whose features differ from the first step
        size = 8
    big, big_losses = _run(_config(data, tmp_path / "big", batch_size=size, **changes))
    acc, acc_losses = _run(_config(data, tmp_path / "acc", batch_size=size // 2, accum_steps=2, **changes))
    np.testing.assert_allclose(acc_losses, big_losses, rtol=0, atol=1e-5)
    if label_positives:  # and the labels change the loss: same data, plain CLIP targets
        changes["clip_label_positives"] = False
        _, plain = _run(_config(data, tmp_path / "plain", batch_size=size, **changes))
        assert abs(plain[0] - big_losses[0]) > 1e-3
    for (name, a), b in zip(big.model.state_dict().items(), acc.model.state_dict().values()):
        if label_positives and name.endswith("attention.self.key.bias"):
            continue  # its exact gradient is 0 (softmax ignores it): Adam turns rounding noise into a full step
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def _write_yaml(path: Path, cfg: TrainConfig) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_processes_match_one(data, tmp_path):
    changes = dict(model_overrides=NO_TEXT_DROPOUT, steps=2, seed_per_rank=False, lr=EQUIVALENCE_LR)
    one, one_losses = _run(_config(data, tmp_path / "one", batch_size=4, **changes))
    cfg_file = _write_yaml(tmp_path / "two.yaml", _config(data, tmp_path / "two", batch_size=2, **changes))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "HLIPCore.cli.main", "train", "--config", str(cfg_file), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two_losses = _logged_losses(tmp_path / "two")
    np.testing.assert_allclose([two_losses[1], two_losses[2]], one_losses, rtol=0, atol=1e-5)
    from HLIPCore.model.checkpoint import load_state_dict
    two_state = load_state_dict(tmp_path / "two" / "final" / "model.safetensors")
    for name, a in one.model.state_dict().items():
        torch.testing.assert_close(two_state[name], a, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_sigkill_then_resume_continues(data, tmp_path):
    out = tmp_path / "killed"
    cfg_file = _write_yaml(tmp_path / "k.yaml", _config(data, out, steps=40, save_every_steps=2))
    cmd = [sys.executable, "-m", "HLIPCore.cli.main", "train", "--config", str(cfg_file), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints/step_000004.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"]
    assert 4 <= saved < 40
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(_logged_losses(out)) == list(range(1, 41))  # each step exactly once
    assert torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"] == 40
    assert (out / "final" / "model.safetensors").is_file()


def test_periodic_eval_shows_every_task_not_only_the_logged_mean(data, tmp_path, capsys):
    cfg = _config(data, tmp_path / "shown", steps=1, batch_size=4, eval_manifest=str(data / "manifest.jsonl"),
                  prompts="pub_brain_5")
    Trainer(cfg, progress=True).train()
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "zero-shot evaluation at step 1" in text
    step_eval = json.loads((tmp_path / "shown" / "eval" / "step_000001.json").read_text())
    for task, r in step_eval["tasks"].items():  # each task's own number, as the eval json has it
        assert any(line.split()[:1] == [task] and f"{r['balanced_accuracy']:.3f}" in line for line in text.splitlines())


@pytest.mark.slow
def test_periodic_eval_and_hlip_eval_cli(data, tmp_path):
    cfg = _config(data, tmp_path / "ev", steps=2, batch_size=4, eval_manifest=str(data / "manifest.jsonl"),
                  prompts="pub_brain_5", eval_every_steps=1)
    trainer, _ = _run(cfg)
    log_rows = list(csv.DictReader(open(tmp_path / "ev" / "log.csv")))
    assert all(r["eval_auc"] for r in log_rows)
    step_eval = json.loads((tmp_path / "ev" / "eval" / "step_000002.json").read_text())
    assert set(step_eval["tasks"]) == {"disease", "tumor", "stroke_detection", "glioma_detection",
                                       "meningioma_detection"}  # no metastasis study: that task has only normals
    assert step_eval["tasks"]["disease"]["n"] == 4 and step_eval["tasks"]["tumor"]["n"] == 2
    cmd = [sys.executable, "-m", "HLIPCore.cli.main", "eval", "--model", str(tmp_path / "ev" / "final"),
           "--manifest", str(data / "manifest.jsonl"), "--prompts", "pub_brain_5", "--out", str(tmp_path / "cli"),
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "disease" in proc.stdout and "bal.acc" in proc.stdout
    cli = json.loads((tmp_path / "cli" / "eval.json").read_text())
    for task, metrics in step_eval["tasks"].items():  # same model, same studies: same numbers
        assert cli["tasks"][task]["auc"] == pytest.approx(metrics["auc"], abs=1e-6) or np.isnan(metrics["auc"])
    # --pointing: masks covering every scan, lesion (1) for the glioma and the stroke, oedema (2) for the meningioma
    lines = []
    for line in (data / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        value = {"glioma": 1, "stroke": 1, "meningioma": 2}.get(entry["label"], 0)
        mask = np.full((40, 40, 12), value, np.uint8)  # the scans' grid ([x, y, z]) and affine
        nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 4.0, 1.0])), tmp_path / f"mask_{entry['label']}.nii.gz")
        lines.append(json.dumps({**entry, "study": str(data / entry["study"]),
                                 "mask": str(tmp_path / f"mask_{entry['label']}.nii.gz")}))
    (tmp_path / "masks.jsonl").write_text("\n".join(lines) + "\n")
    game = subprocess.run(cmd[:cmd.index("--manifest") + 1] + [str(tmp_path / "masks.jsonl"), "--prompts",
                                                             "pub_brain_5", "--no-progress", "--pointing"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert game.returncode == 0, game.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in game.stdout.splitlines() if line.startswith("  ")}
    assert "3 lesion studies" in game.stdout
    # (the meningioma mask is all oedema: no lesion voxel to measure a distance to)
    assert rows["Glioma"] == ["1.000", "1.000", "0.0"] and rows["Meningioma"] == ["0.000", "1.000", "-"]
    assert rows["all"] == ["0.667", "1.000", "0.0"]
    # every study unreadable: an error and a non-zero exit, not a table of NaNs that looks like a result
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"study": "broken.nii.gz", "label": "glioma"}) + "\n")
    cmd[cmd.index("--manifest") + 1] = str(tmp_path / "broken.jsonl")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert "no study could be evaluated" in proc.stdout and "Traceback" not in proc.stderr


def test_report_text_modes_keep_the_impression():
    from HLIPCore.training.report_text import report_text, split_sections
    report = ("EXAMINATION: MRI brain.\n\nTECHNIQUE: " + "axial T1, " * 60 + "\n\nFINDINGS:\nA mass in the left "
              "frontal lobe.\n\nIMPRESSION: Left frontal glioma.")
    assert set(split_sections(report)) == {"EXAMINATION", "TECHNIQUE", "FINDINGS", "IMPRESSION"}
    assert report_text(report, "full") == report
    assert report_text(report, "impression_first") == "Left frontal glioma. A mass in the left frontal lobe."
    assert report_text(report, "impression") == "Left frontal glioma."
    gen = torch.Generator().manual_seed(0)
    seen = {report_text(report, "sections", gen) for _ in range(40)}
    assert seen == {"Left frontal glioma.", "A mass in the left frontal lobe.",
                    "Left frontal glioma. A mass in the left frontal lobe."}
    assert report_text("no sections here", "sections", gen) == "no sections here"


def test_word_dropout_deletes_words_reproducibly(data, tmp_path):
    from HLIPCore.errors import ConfigError
    from HLIPCore.training.report_text import drop_words
    words = [f"w{i}" for i in range(400)]
    gen = torch.Generator().manual_seed(0)
    kept = drop_words(" ".join(words), 0.4, gen).split()
    assert kept == [w for w in words if w in set(kept)]          # order kept, nothing added
    assert 0.5 < len(kept) / len(words) < 0.7                     # ~60 % survive
    assert all(len(drop_words("a b", 0.99, gen).split()) == 1 for _ in range(20))  # never an empty text
    assert drop_words("Glioma.", 0.9, gen) == "Glioma."
    with pytest.raises(ConfigError, match="'text_word_dropout'"):
        TrainConfig(text_word_dropout=1.0)
    # the training items: reproducible per (study, epoch), shorter than the report, different across epochs
    trainer = Trainer(_config(data, tmp_path / "run", text_word_dropout=0.5), progress=False)
    ds = trainer.dataset
    index = next(i for i, e in enumerate(ds.entries) if e.label == "glioma")
    texts = [ds[(index, 2, epoch)][1] for epoch in range(12)]
    assert texts == [ds[(index, 2, epoch)][1] for epoch in range(12)]
    report = REPORTS["glioma"].split()
    assert all(set(t.split()) <= set(report) and 0 < len(t.split()) for t in texts)
    assert len(set(texts)) > 3 and any(len(t.split()) < len(report) for t in texts)


def test_lock_image_trains_the_text_side_only_and_keeps_batchnorm_statistics(data, tmp_path):
    """A text-only phase on a trained model: the image tower (a BatchNorm conv stem here) and so its embeddings and
    attention maps stay bit-identical; the text tower learns."""
    from HLIPCore.errors import ConfigError
    from HLIPCore.model.factory import get_model_config
    from safetensors.torch import load_file
    mcfg = json.loads(json.dumps(get_model_config("tiny_multiscan_h3")))
    mcfg["vision_cfg"]["stem"] = {"layers": [[8, [2, 4, 4], [2, 4, 4]], [16, 2, 3], [16, 2, 3]], "norm": "batch"}
    first, _ = _run(_config(data, tmp_path / "first", model=mcfg, steps=2, model_overrides=LEARNABLE_TEXT))
    trained = tmp_path / "first" / "final"
    with pytest.raises(ConfigError, match="'tokenizer': 'build' makes a new vocabulary"):
        Trainer(_config(data, tmp_path / "rebuilt", model=str(trained), lock_image=True), progress=False)
    locked, losses = _run(_config(data, tmp_path / "locked", model=str(trained), tokenizer=str(trained), steps=4,
                                  lock_image=True))
    before = load_file(trained / "model.safetensors")
    after = load_file(tmp_path / "locked" / "final" / "model.safetensors")
    visual = [k for k in before if k.startswith("visual.")]
    assert any("running_mean" in k for k in visual)               # BatchNorm statistics are among them
    assert all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    assert all(np.isfinite(losses))
    locked.model.train()
    assert not locked.model.visual.training and locked.model.text.training
    for key in ("stem_loss_weight", "patch_dropout"):
        with pytest.raises(ConfigError, match=f"'lock_image': .*{key}"):
            TrainConfig(train_manifest="m.jsonl", lock_image=True, **{key: 0.5})


def test_scan_dropout_leaves_out_whole_scans_and_keeps_one(data, tmp_path):
    from HLIPCore.errors import ConfigError
    from HLIPCore.training.dataset import augment_study
    study = torch.arange(4.0).view(4, 1, 1, 1, 1)   # scan i holds the value i
    gen = torch.Generator().manual_seed(0)
    distinct = []
    for _ in range(400):
        out, order = augment_study(study, 6, gen, return_order=True, drop=0.5)
        assert out.shape[0] == 6 and torch.equal(out.flatten(), order.float())
        distinct.append(len(set(order.tolist())))
    # P(k distinct of 4 at p = 0.5): 1 -> 5/16 (all dropped keeps one), 2 -> 6/16, 3 -> 4/16, 4 -> 1/16
    counts = np.bincount(distinct, minlength=5)[1:] / len(distinct)
    assert np.allclose(counts, [5 / 16, 6 / 16, 4 / 16, 1 / 16], atol=0.07)
    # without it, the draws are those of a run made before the option existed: every scan, in a random order
    plain = [augment_study(study, 6, torch.Generator().manual_seed(s), return_order=True)[1] for s in range(5)]
    assert all(set(o.tolist()) == {0, 1, 2, 3} for o in plain)
    assert all(torch.equal(o, augment_study(study, 6, torch.Generator().manual_seed(s), return_order=True,
                                            drop=0.0)[1]) for s, o in enumerate(plain))
    with pytest.raises(ConfigError, match="'scan_dropout'"):
        TrainConfig(scan_dropout=1.0)
    # through the training items: a 3-scan study is sometimes seen through 1 or 2 of its scans, never without any
    for drop, expected in ((0.5, {1, 2}), (0.0, {3})):
        ds = Trainer(_config(data, tmp_path / f"run{drop}", scan_dropout=drop, intensity_scale=0.0,
                             intensity_shift=0.0), progress=False).dataset
        index = next(i for i in range(len(ds)) if ds.num_scans(i) == 3)
        cached = ds.cache.load(ds.entries[index])
        seen = {len({next(j for j in range(3) if torch.equal(scan, cached[j])) for scan in ds[(index, 3, epoch)][0]})
                for epoch in range(30)}
        assert expected <= seen if drop else seen == expected
