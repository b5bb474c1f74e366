"""``memories audit``: the paper's analysis of any model on two image folders (experiments.audit, the CLI)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memories_lib.cli import EXIT_USAGE, main
from memories_lib.core.images import save_image
from memories_lib.core.store import Store
from memories_lib.erasure.checkpoints import save_unet_weights
from memories_lib.experiments import audit
from memories_lib.experiments.audit import AuditError, AuditSettings, read_folder, run_audit

#: A quick audit: DDIM with few steps, small bootstrap and reference.
QUICK = dict(inversion="ddim", num_steps=4, n_boot=20, num_reference=1000, official_draws=10, device="cpu",
             triplets=2)


def _folder(path: Path, n: int, seed: int, captions: bool = True, sizes=((32, 32),)) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    rows = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        save_image(torch.rand(3, h, w, generator=g), path / f"img{i:02d}.png")
        rows.append((f"img{i:02d}.png", "a red circle on a plain background"))
    if captions:
        with open(path / "metadata.csv", "w", newline="") as f:
            csv.writer(f).writerows([("file_name", "text"), *rows])
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_ldm_path):
    """Two captioned folders (one with images of another size) and an 'erased' UNet: one to_k weight changed."""
    root = tmp_path_factory.mktemp("audit")
    concept = _folder(root / "concept", 5, 0, sizes=((32, 32), (40, 36)))
    reference = _folder(root / "reference", 6, 1, captions=False)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_ldm_path, subfolder="unet")
    name = next(k for k in unet.state_dict() if k.endswith("attn2.to_k.weight"))
    edited = unet.state_dict()[name] * 0.5
    checkpoint = save_unet_weights(root / "erased.safetensors", {name: edited})
    return {"root": root, "concept": concept, "reference": reference, "checkpoint": checkpoint}


def test_read_folder_captions(inputs, tmp_path):
    concept = read_folder(inputs["concept"], "concept images")
    assert concept.names() == [f"img{i:02d}.png" for i in range(5)]
    assert set(concept.captions) == {"a red circle on a plain background"}
    reference = read_folder(inputs["reference"], "reference images")
    assert reference.captions == ("",) * 6 and reference.captions_file is None
    table = tmp_path / "captions.csv"
    table.write_text("file_name,text\n" + "".join(f"img{i:02d}.png,caption {i}\n" for i in range(6)))
    explicit = read_folder(inputs["reference"], "reference images", captions=table)
    assert explicit.captions == tuple(f"caption {i}" for i in range(6))


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("empty", "holds no image files"),
    ("absent", "not in"),
    ("uncaptioned", "have no caption"),
    ("twice", "twice"),
    ("columns", "no column"),
])
def test_read_folder_errors_name_the_problem(tmp_path, problem, message):
    folder = tmp_path / "images"
    if problem != "missing":
        folder.mkdir()
    if problem not in ("missing", "empty"):
        save_image(torch.zeros(3, 8, 8), folder / "a.png")
        save_image(torch.zeros(3, 8, 8), folder / "b.png")
    rows = {"absent": "a.png,x\nb.png,y\nc.png,z\n", "uncaptioned": "a.png,x\n", "twice": "a.png,x\na.png,y\nb.png,z\n"}
    if problem in rows:
        (folder / "metadata.csv").write_text("file_name,text\n" + rows[problem])
    if problem == "columns":
        (folder / "metadata.csv").write_text("name,caption\na.png,x\n")
    with pytest.raises(AuditError, match=message):
        read_folder(folder, "concept images")


def test_bad_input_fails_before_the_model_loads(inputs, tmp_path):
    """A corrupt image or a missing checkpoint is named even though the model path does not exist either."""
    store = Store(tmp_path / "store")
    broken = tmp_path / "broken"
    shutil.copytree(inputs["concept"], broken)
    (broken / "img03.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="img03.png"):
        run_audit("/nonexistent/model", broken, inputs["reference"], store, settings=AuditSettings(**QUICK))
    with pytest.raises(AuditError, match="missing.pt"):
        run_audit("/nonexistent/model", inputs["concept"], inputs["reference"], store,
                  unet_checkpoint=tmp_path / "missing.pt", settings=AuditSettings(**QUICK))
    with pytest.raises(AuditError, match="cannot load the model"):
        run_audit(str(tmp_path / "no-model"), inputs["concept"], inputs["reference"], store,
                  settings=AuditSettings(**QUICK))
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.json"))


@pytest.mark.parametrize("settings, message", [
    (dict(inversion="nope"), "nope"),
    (dict(num_steps=0), "num_steps"),
    (dict(max_images=1), "max_images"),
    (dict(dtype="float8"), "dtype"),
])
def test_settings_are_checked(settings, message):
    with pytest.raises(AuditError, match=message):
        AuditSettings(**{**QUICK, **settings})


def test_audit_end_to_end(inputs, tiny_ldm_path, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    out = tmp_path / "report"
    result = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                       unet_checkpoint=inputs["checkpoint"], settings=AuditSettings(**QUICK), out=out, progress=False)
    for name in ("results.json", "images.csv", "report.md", "report.html", "distributions.png", "triplets.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert data["inputs"]["concept_images"]["count"] == 5 and data["inputs"]["reference_images"]["count"] == 6
    assert data["model"]["unet_checkpoint"] == str(inputs["checkpoint"])
    concept = data["images"]["concept"]
    assert [r["file"] for r in concept] == [f"img{i:02d}.png" for i in range(5)]
    assert np.isclose(data["summary"]["psnr"], np.mean([r["psnr"] for r in concept]))
    reference = data["images"]["reference"]
    assert len(reference) == 6 and data["summary"]["n_e"] + data["summary"]["diverged_e"] == 5
    assert data["summary"]["n_r"] + data["summary"]["diverged_r"] == 6
    # the one inversion of E and R is cut where E ends: each side's mean is its own records'
    for key, records in (("nll", concept), ("ref_nll", reference)):
        kept = [r["nll"] for r in records if not r["diverged"]]
        assert np.isclose(data["summary"][key], np.mean(kept)), key
    assert not np.isclose(data["summary"]["nll"], data["summary"]["ref_nll"])
    for key in ("rd_emd", "rd_emd_low", "rd_emd_high", "rd_w2", "rd_w2_50", "nll", "ref_nll", "vae_psnr"):
        assert data["summary"][key] is not None and np.isfinite(data["summary"][key]), key
    assert data["summary"]["rd_emd_low"] <= data["summary"]["rd_emd"] <= data["summary"]["rd_emd_high"]
    report = (out / "report.md").read_text()
    assert "reference images have no captions" in report and f"{data['summary']['rd_w2_50']:.2f}" in report
    assert "<table>" in (out / "report.html").read_text()

    # The erased weights are applied: another model than the base, and the audit of the base differs.
    base = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                     settings=AuditSettings(**QUICK), progress=False)
    assert base.model["weights_hash"] != result.model["weights_hash"]
    assert not np.array_equal(base.concept.nll, result.concept.nll)

    # A rerun reads every record from the store: inversion is never called.
    def refuse(*args, **kwargs):
        raise AssertionError("inverted again")

    monkeypatch.setattr(audit.inversion, "invert", refuse)
    again = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                      unet_checkpoint=inputs["checkpoint"], settings=AuditSettings(**QUICK), progress=False)
    assert again.summary == result.summary


def test_max_images_is_a_seeded_choice(inputs, tiny_ldm_path, tmp_path):
    settings = AuditSettings(**{**QUICK, "max_images": 3})
    result = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], Store(tmp_path / "s"),
                       settings=settings, progress=False)
    assert len(result.concept) == 3 and len(result.reference) == 3
    again = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], Store(tmp_path / "t"),
                      settings=settings, progress=False)
    assert again.concept_images.names() == result.concept_images.names()
    assert np.array_equal(again.concept.nll, result.concept.nll)  # deterministic, computed afresh


def test_cli_audit_errors_and_report(inputs, tiny_ldm_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))
    assert main(["audit", "--model", str(tiny_ldm_path), "--concept-images", str(tmp_path / "nowhere"),
                 "--reference-images", str(inputs["reference"])]) == EXIT_USAGE
    assert "concept images folder" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["audit", "--model", str(tiny_ldm_path), "--unet-checkpoint", str(inputs["checkpoint"]),
                 "--concept-images", str(inputs["concept"]), "--reference-images", str(inputs["reference"]),
                 "--inversion", "ddim", "--num-steps", "3", "--n-boot", "20", "--device", "cpu", "--out", str(out),
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "relative distance" in printed and str(out / "report.html") in printed
    assert json.loads((out / "results.json").read_text())["settings"]["num_steps"] == 3


def test_two_processes_give_the_single_process_numbers(inputs, tiny_ldm_path, tmp_path):
    """accelerate launch with 2 CPU processes shares the batches; the numbers are the single process's."""
    args = ["--model", str(tiny_ldm_path), "--unet-checkpoint", str(inputs["checkpoint"]),
            "--concept-images", str(inputs["concept"]), "--reference-images", str(inputs["reference"]),
            "--inversion", "ddim", "--num-steps", "3", "--n-boot", "20", "--device", "cpu", "--batch-size", "3", "-q"]
    env = {**os.environ, "MEMORIES_CACHE": str(tmp_path / "two"), "OMP_NUM_THREADS": "1"}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([*accelerate, "-m", "memories_lib.cli", "audit", *args, "--out", str(tmp_path / "out2")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert two["processes"] == 2
    # Both processes wrote records: every image's entry is in the store, complete and readable.
    store = Store(tmp_path / "two" / "results")
    entries = [store.get(p.stem) for p in (tmp_path / "two" / "results").rglob("*.json")]
    assert len(entries) == 11 and all(e is not None for e in entries)

    env["MEMORIES_CACHE"] = str(tmp_path / "one")
    done = subprocess.run([sys.executable, "-m", "memories_lib.cli", "audit", *args, "--out", str(tmp_path / "out1")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "out1" / "results.json").read_text())
    assert one["processes"] == 1
    assert one["images"] == two["images"] and one["summary"] == two["summary"]


def test_a_process_other_than_main_inverts_but_neither_judges_nor_reports(inputs, tiny_ldm_path, tmp_path,
                                                                          monkeypatch):
    """Process 1 of a launched job (alone here, so it takes every batch): records stored, no judges, no report."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(audit, "open_judges", lambda *a: pytest.fail("process 1 opened the judges"))
    settings = AuditSettings(**{**QUICK, "max_images": 3})
    store = Store(tmp_path / "s")
    assert run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store, settings=settings,
                     judges=("tiny", "triangle"), out=tmp_path / "report", progress=False) is None
    assert len(list((tmp_path / "s").rglob("*.json"))) == 6 and not (tmp_path / "report").exists()


def test_export_example_then_audit(tmp_path, monkeypatch):
    """The README's worked example on the tiny profile: a world's model and sets as files, audited."""
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))
    from memories_lib.worlds import open_world

    world = open_world("tiny")
    example = audit.export_example(world, "uce", "triangle", tmp_path / "example", n=4, progress=False)
    assert example.unet_checkpoint is not None and example.unet_checkpoint.is_file()
    assert example.text_encoder is None  # UCE edits the UNet's cross-attention only
    assert (example.base / "unet").is_dir() and (example.concept_images / "metadata.csv").is_file()
    assert "--unet-checkpoint" in example.command()
    with pytest.raises(AuditError, match="not empty"):
        audit.export_example(world, "uce", "triangle", tmp_path / "example", n=4, progress=False)
    with pytest.raises(AuditError, match="no erased model"):
        audit.export_example(world, "nope", "triangle", tmp_path / "other", n=4, progress=False)
    result = run_audit(str(example.base), example.concept_images, example.reference_images, Store(tmp_path / "s"),
                       unet_checkpoint=example.unet_checkpoint, settings=AuditSettings(**QUICK),
                       judges=("tiny", "triangle"), out=tmp_path / "report", progress=False)
    from memories_lib.experiments.models import load_model

    assert result.model["weights_hash"] == load_model(world, "uce", "triangle").weights_hash()
    # The profile's judges score the regenerations (the tiny world's are trained briefly: values, not meaning).
    assert 0 <= result.judged["detected"] <= 1 and np.isfinite(result.judged["similarity"])
    assert np.isfinite(result.judged["similarity_original"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Do the regenerations show the concept?" in report and "`tiny`" in report
    with pytest.raises(AuditError, match="nope"):
        run_audit(str(example.base), example.concept_images, example.reference_images, Store(tmp_path / "s"),
                  settings=AuditSettings(**QUICK), judges=("tiny", "nope"), progress=False)


def test_float16_runs_on_the_cpu_and_keys_its_own_records(inputs, tiny_ldm_path, tmp_path):
    """A float16 audit (the GPU's dtype) runs on the CPU too; its records are not the float32 ones."""
    store = Store(tmp_path / "store")
    half = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                     settings=AuditSettings(**{**QUICK, "dtype": "float16"}), progress=False)
    full = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                     settings=AuditSettings(**QUICK), progress=False)
    assert half.model["dtype"] == "float16" and full.model["dtype"] == "float32"
    assert np.isfinite(half.concept.psnr).all() and np.isfinite(half.summary["rd_emd"])
    assert not np.array_equal(half.concept.nll, full.concept.nll)
    assert np.abs(half.concept.psnr - full.concept.psnr).max() < 3.0  # the same images, half precision


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_audit_on_cuda_matches_the_cpu(inputs, tiny_ldm_path, tmp_path, dtype):
    """On a GPU the audit's records are its own (device and dtype in the key) and its numbers are the CPU's."""
    store = Store(tmp_path / "store")
    cpu = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                    settings=AuditSettings(**QUICK), progress=False)
    gpu = run_audit(str(tiny_ldm_path), inputs["concept"], inputs["reference"], store,
                    settings=AuditSettings(**{**QUICK, "device": "cuda", "dtype": dtype}), progress=False)
    assert gpu.model["device"].startswith("cuda") and gpu.model["dtype"] == dtype
    assert not np.array_equal(gpu.concept.nll, cpu.concept.nll)  # computed, not read from the CPU's records
    tolerance = 0.05 if dtype == "float32" else 1.0
    assert np.abs(gpu.concept.psnr - cpu.concept.psnr).max() < tolerance
    assert np.abs(gpu.concept.nll - cpu.concept.nll).max() / np.abs(cpu.concept.nll).max() < tolerance / 10


def test_auto_dtype_is_float16_only_on_a_gpu_for_inversions_measured_safe_in_it():
    from memories_lib.experiments.audit import resolve_dtype
    from memories_lib.inversion.api import METHODS

    for method in METHODS:
        settings = AuditSettings(**{**QUICK, "inversion": method})
        assert resolve_dtype(settings, "cpu") == "float32"
        assert resolve_dtype(settings, "cuda:0") == ("float16" if method in ("ddim", "renoise") else "float32")
    assert resolve_dtype(AuditSettings(**{**QUICK, "dtype": "bfloat16"}), "cuda") == "bfloat16"
    assert resolve_dtype(AuditSettings(**{**QUICK, "dtype": "float32"}), "cuda") == "float32"
