"""The throughput benchmark runs on the tiny profile (its ratio is reported, not asserted: timings vary)."""

from __future__ import annotations

import math

from benchmarks import bench_throughput


def test_throughput_benchmark_reports_the_ratio_to_the_peak(capsys):
    result = bench_throughput.main(["--profile", "tiny", "--images", "4", "--steps", "2"])
    for key in ("peak_gflops", "unet_gflops", "loop_gflops", "unet_ratio", "loop_ratio", "before_images_per_s",
                "after_images_per_s", "speedup"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["batch"] == 4 and result["unet_gflop_per_row"] > 0
    assert set(result["passed"]) == {"unet_ratio"}
    out = capsys.readouterr().out
    assert "ratio to peak" in out and "images/s: before" in out


def test_official_benchmark_measures_every_side(capsys):
    """The benchmark against the official loop and diffusers' inverse scheduler, on the tiny model (no goal asserted)."""
    from benchmarks import bench_official

    result = bench_official.main(["--model", "tiny", "--images", "2", "--steps", "2", "--repeats", "1"])
    for method in ("ddim", "renoise"):
        r = result[method]
        for key in ("batched_images_per_s", "one_at_a_time_images_per_s", "official_loop_images_per_s",
                    "official_speedup"):
            assert math.isfinite(r[key]) and r[key] > 0, (method, key)
    assert result["diffusers_one"] > 0 and result["diffusers_many"] > 0
    assert set(result["passed"]) == {"diffusers_one", "diffusers_many"}  # the official goal is a GPU's
    assert "official loop" in capsys.readouterr().out


def test_diffusers_inverse_scheduler_loop_inverts(ldm):
    """The user's loop the benchmark times is a real DDIM inversion: close to the project's on the same model."""
    import torch

    from benchmarks.bench_official import diffusers_ddim_inversion
    from memories_lib.inversion import invert

    images = torch.rand(2, 3, ldm.image_size, ldm.image_size, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    theirs = diffusers_ddim_inversion(ldm, images, prompts, 20)
    ours = invert(ldm, images, prompts, method="ddim", num_steps=20, regenerate=False, progress=False).seeds
    assert theirs.shape == ours.shape
    cos = torch.nn.functional.cosine_similarity(theirs.flatten(1), ours.flatten(1)).min()
    assert cos > 0.9, float(cos)


def test_precision_benchmark_compares_each_half_dtype_with_float32(tmp_path, capsys):
    """Every (method, dtype) gets the seed, norm and PSNR comparison and a verdict; the built model is reused."""
    from benchmarks import bench_precision

    argv = ["--model", "tiny", "--images", "2", "--steps", "3", "--methods", "ddim", "--models-dir", str(tmp_path)]
    result = bench_precision.main(argv)
    r = result["methods"]["ddim"]["bfloat16"]
    assert set(result["methods"]["ddim"]) == {"float16", "bfloat16"}
    assert 0 < r["seed_relative_difference"] < 1 and math.isfinite(r["psnr_change_db"]) and r["diverged_half"] == 0
    assert r["safe"] == (abs(r["psnr_change_db"]) <= bench_precision.PSNR_TOLERANCE_DB
                         and abs(r["norm_per_entry_change"]) <= bench_precision.NORM_TOLERANCE
                         and r["diverged_half"] <= r["diverged_float32"])
    built = (tmp_path / "tiny" / "model_index.json").stat().st_mtime_ns
    bench_precision.main(argv + ["--dtypes", "float16"])
    assert (tmp_path / "tiny" / "model_index.json").stat().st_mtime_ns == built  # reused, not rebuilt
    line = next(l for l in capsys.readouterr().out.splitlines() if "ddim bfloat16" in l)
    assert line.endswith(": safe" if r["safe"] else ": NOT safe")


def test_results_are_appended_with_the_device_named(tmp_path, monkeypatch):
    """--record writes RESULTS.md with its heading once, then appends a section per run, naming the device."""
    from benchmarks import bench_official, bench_precision, common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    result = bench_official.main(["--model", "tiny", "--images", "2", "--loop-images", "1", "--steps", "2",
                                  "--methods", "ddim", "--no-diffusers", "--models-dir", str(tmp_path), "--record"])
    rates = result["ddim"]
    assert rates["official_speedup"] == rates["batched_images_per_s"] / rates["official_loop_images_per_s"]
    bench_precision.main(["--model", "tiny", "--images", "2", "--steps", "2", "--methods", "ddim", "--dtypes",
                          "float16", "--models-dir", str(tmp_path), "--record"])
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count("# Benchmark results") == 1
    assert "## official: tiny random model (32 x 32) on " in text and "| ddim | " in text
    assert "2 images (1 in the one-image loops)" in text
    assert "## precision: tiny random model (32 x 32) on " in text and "| ddim | float16 | " in text
    assert "DDIMInverseScheduler" not in text  # (b) was skipped


def test_shared_benchmark_splits_the_images_between_the_processes(tmp_path, capsys):
    """Two launched processes share the loop: each image inverted once, the seeds the single process's."""
    from benchmarks import bench_shared

    result = bench_shared.main(["--images", "6", "--batch-size", "1", "--steps", "10", "--models-dir", str(tmp_path)])
    assert result["processes"] == 2 and sum(result["inverted"]) == 6 and min(result["inverted"]) > 0
    assert result["identical"]
    assert result["seconds_one"] > 0 and result["seconds_job"] > 0 and math.isfinite(result["speedup"])
    assert "speedup" in capsys.readouterr().out


def test_the_runner_passes_options_with_or_without_the_separator():
    from benchmarks.run import main, split_arguments

    assert split_arguments(["official", "--images", "16"]) == (["official"], ["--images", "16"])
    assert split_arguments(["official", "--", "--images", "16"]) == (["official"], ["--images", "16"])
    assert split_arguments(["official", "precision"]) == (["official", "precision"], [])
    assert split_arguments(["--", "--record"]) == ([], ["--record"])
    assert main(["no-such-benchmark"]) == 1


def test_a_benchmark_removes_the_models_it_built_in_a_temporary_folder(monkeypatch):
    """Without --models-dir the model folder is temporary: removed at exit (an SD-1.4-sized model is gigabytes)."""
    from benchmarks import common

    registered = []
    monkeypatch.setattr(common.atexit, "register", lambda fn, *a, **k: registered.append((fn, a, k)))
    folder = common.temporary_folder("bench-test-")
    common.model_path("tiny", folder)
    assert (folder / "tiny" / "model_index.json").exists() and len(registered) == 1
    fn, a, k = registered[0]
    fn(*a, **k)
    assert not folder.exists()
