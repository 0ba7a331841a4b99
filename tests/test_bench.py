"""The harness's FLOP count (bench/run.py), checked against layer sizes worked out by hand.

    pytest tests/test_bench.py -q
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn


def test_forward_flops_of_each_layer_kind(load_bench):
    run = load_bench("run")
    linear = nn.Linear(784, 512)
    assert run.forward_flops(linear, torch.zeros(3, 784)) == 2 * 784 * 512
    conv = nn.Conv2d(1, 64, 5, 2, padding=2)  # 28x28 -> 14x14x64, 25 MACs per output
    assert run.forward_flops(conv, torch.zeros(3, 1, 28, 28)) == 2 * 14 * 14 * 64 * 25
    deconv = nn.ConvTranspose2d(64, 1, 5, 2, padding=2, output_padding=1)  # 14x14x64 -> 28x28
    assert run.forward_flops(deconv, torch.zeros(3, 64, 14, 14)) == 2 * 14 * 14 * 64 * 25


def test_vae_training_flops_are_three_forward_passes(load_bench):
    run = load_bench("run")
    linears = [(784, 512), (512, 512), (512, 40), (20, 512), (512, 512), (512, 512), (512, 784)]
    assert run.train_flops_per_image("vae") == 3 * sum(2 * i * o for i, o in linears)
    assert run.train_flops_per_image("gan") > 10 * run.train_flops_per_image("vae")


def test_variants_parse_into_train_options(load_bench):
    run = load_bench("run")
    assert run.parse_variant("bf16+channels-last+compile", "fp32") == {
        "precision": "bf16", "channels_last": True, "compile_mode": "default", "cuda_graphs": False}
    assert run.parse_variant("fp32", "bf16") == {"precision": "fp32", "cuda_graphs": False}
    assert run.parse_variant("graphs", "fp32")["cuda_graphs"] is True


@pytest.mark.slow
def test_the_fused_benchmark_trains_what_a_sweep_samples(load_bench):
    """Every benchmarked configuration lies in its sweep's search space, dropout included (a GAN
    sweep searches it, and fused dropout is work the benchmark must not leave out)."""
    from sweeps.search_space import SPACES

    bench = load_bench("bench_fused")
    for model in ("vae", "gan"):
        space = SPACES[model]
        for cfg in bench.member_configs(model, 8):
            for name, value in cfg.to_dict().items():
                if name in space:
                    assert space[name].low <= value <= space[name].high, (model, name, value)
            assert cfg.dropout > 0
    assert all(cfg.dropout == 0 for cfg in bench.member_configs("gan", 4, gan_dropout=False))


def run_fused_benchmark(out: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """bench/bench_fused.py as a script (its unfused trials are processes that import it): the VAE,
    one unfused process, one timed step a row, its rows written to `out`."""
    script = Path(__file__).resolve().parents[1] / "bench" / "bench_fused.py"
    return subprocess.run([sys.executable, str(script), "--model", "vae", "--procs", "1", "--steps", "1",
                           "--data-dir", str(data_dir), "--json", str(out), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # runs the benchmark's script: seconds
def test_the_fused_benchmark_compares_each_precision_with_its_own_unfused_trial(tmp_path, data_dir):
    out = tmp_path / "rows.json"
    done = run_fused_benchmark(out, data_dir, "--members", "2", "--precisions", "fp32,tf32",
                               "--unfused-precisions", "fp32,tf32")
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["precision"]) for r in rows] == [
        ("unfused x1", "fp32"), ("unfused x1", "tf32"), ("fused K=2", "fp32"), ("fused K=2", "tf32")]
    assert "x one tf32 trial" in done.stdout and "x one fp32 trial" not in done.stdout


@pytest.mark.slow  # runs the benchmark's script: seconds
def test_repeated_rows_keep_every_repeat_and_their_median(tmp_path, data_dir):
    """On a shared machine one timing of a row moves by 10-25%: --repeats times every row again,
    in turns, and keeps each row's median (the JSON keeps every repeat)."""
    out = tmp_path / "rows.json"
    done = run_fused_benchmark(out, data_dir, "--members", "2", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["unfused x1", "fused K=2"]
    for row in rows:
        first, second = row["repeats"]
        assert row["trial_epochs_per_hour"] == pytest.approx((first + second) / 2)
        assert f"[{min(first, second):.1f}-{max(first, second):.1f}]" in done.stdout
    assert done.stdout.count("[2/2] vae") == 2 and "medians over the repeats" in done.stdout


@pytest.mark.slow  # runs the benchmark's script: seconds
def test_a_failing_fused_row_is_reported_and_the_others_still_run(tmp_path, data_dir):
    """On a GPU a row that fails (here: a group of no members) must not cost the rest of the
    run: its row says why, the other rows are measured, and the exit code says one failed."""
    out = tmp_path / "rows.json"
    done = run_fused_benchmark(out, data_dir, "--members", "0", "1")
    assert done.returncode == 1, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert "a fused group needs at least one member" in rows[1]["error"]
    assert rows[2]["mode"] == "fused K=1" and rows[2]["trial_epochs_per_hour"] > 0
    assert "FAILED" in done.stdout and "1 fused row(s) failed" in done.stderr
