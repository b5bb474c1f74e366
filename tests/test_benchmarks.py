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
