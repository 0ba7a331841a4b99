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


def test_optimizer_benchmark_runs_on_the_cpu(load_bench, capsys):
    """bench_optim.py once crashed on a change to how StackedAdam holds gradients; run it small."""
    assert load_bench("bench_optim").main(["--members", "2", "--steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "vae, K = 2" in printed and "gan, K = 2" in printed and "StackedAdam" in printed


def test_the_torch_func_comparison_agrees_before_it_times(load_bench, capsys, data_dir):
    """bench_vmap.py times the two ways to fuse only after both compute the same losses for the
    same members, images and noise; run it small on the repo's images."""
    assert load_bench("bench_vmap").main(["--model", "vae", "--members", "2", "--steps", "1",
                                          "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "vae  K = 2" in printed and "vmap / fused" in printed


def test_both_ways_to_fuse_the_gan_compute_the_same_losses(load_bench, data_dir):
    from genmodels.data import load_dataset, to_unit_interval

    vmap = load_bench("bench_vmap")
    images = to_unit_interval(load_dataset("mnist", data_dir).train_images[:16])  # a small batch
    assert vmap.check_agreement("gan", 2, images, torch.device("cpu")) < vmap.AGREE


def test_the_g_step_benchmark_finds_the_same_generator_gradients(load_bench, capsys, data_dir):
    """bench/gan_g_step.py exits 1 when G's gradients differ with and without D's weight
    gradients; run it small, standalone and fused."""
    g_step = load_bench("gan_g_step")
    assert g_step.main(["--rounds", "2", "--data-dir", str(data_dir)]) == 0
    assert g_step.main(["--members", "2", "--rounds", "2", "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("G's gradients the same") == 2 and "a fused group of 2" in printed


@pytest.mark.slow
def test_the_layout_ab_benchmark_runs_both_layouts_in_turns(load_bench, capsys, data_dir):
    ab = load_bench("ab_layouts")
    assert ab.main(["--members", "2", "--rounds", "2", "--steps", "1", "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "per-member" in printed and "members takes" in printed
    with pytest.raises(SystemExit):
        ab.main(["--layouts", "members"])


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


def test_the_fused_benchmark_compares_each_precision_with_its_own_unfused_trial(tmp_path, data_dir):
    out = tmp_path / "rows.json"
    done = run_fused_benchmark(out, data_dir, "--members", "2", "--precisions", "fp32,tf32",
                               "--unfused-precisions", "fp32,tf32")
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["precision"]) for r in rows] == [
        ("unfused x1", "fp32"), ("unfused x1", "tf32"), ("fused K=2", "fp32"), ("fused K=2", "tf32")]
    assert "x one tf32 trial" in done.stdout and "x one fp32 trial" not in done.stdout


def test_repeated_rows_keep_every_repeat_and_their_median(tmp_path, data_dir):
    """On a shared machine one timing of a row moves by 10-25%: --repeats times every row again,
    in turns, and keeps each row's median (the JSON keeps every repeat)."""
    out, picture = tmp_path / "rows.json", tmp_path / "rows.png"
    done = run_fused_benchmark(out, data_dir, "--members", "2", "--repeats", "2", "--plot",
                               str(picture))
    assert done.returncode == 0, done.stderr
    assert picture.stat().st_size > 10_000 and f"wrote {picture}" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["unfused x1", "fused K=2"]
    for row in rows:
        first, second = row["repeats"]
        assert row["trial_epochs_per_hour"] == pytest.approx((first + second) / 2)
        assert f"[{min(first, second):.1f}-{max(first, second):.1f}]" in done.stdout
    assert done.stdout.count("[2/2] vae") == 2 and "medians over the repeats" in done.stdout


def test_the_dropout_benchmark_checks_both_ways_agree_before_it_times(load_bench, capsys):
    dropout = load_bench("dropout")
    for dtype in ("float32", "bfloat16"):
        assert dropout.main(["--members", "2", "--rounds", "2", "--dtype", dtype]) == 0
    printed = capsys.readouterr().out
    assert printed.count("the same outputs and gradients both ways") == 2


def test_a_failing_fused_row_is_reported_and_the_others_still_run(tmp_path, data_dir):
    """On a lent GPU a layout that fails (here: a group of no members) must not cost the rest of the
    run: its row says why, the other rows are measured, and the exit code says one failed."""
    out = tmp_path / "rows.json"
    done = run_fused_benchmark(out, data_dir, "--members", "0", "1")
    assert done.returncode == 1, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert "a fused group needs at least one member" in rows[1]["error"]
    assert rows[2]["mode"] == "fused K=1" and rows[2]["trial_epochs_per_hour"] > 0
    assert "FAILED" in done.stdout and "1 fused row(s) failed" in done.stderr


def test_the_fused_throughput_plot_draws_a_run_against_its_one_fp32_trial(load_bench, tmp_path):
    plot = load_bench("plot_fused")
    row, rate = {"model": "gan", "graphs": "on"}, "trial_epochs_per_hour"
    run = {"device": "NVIDIA X", "steps": 2, "rows": [
        {**row, "mode": "unfused x1", "precision": "fp32", rate: 100.0},
        {**row, "mode": "unfused x1", "precision": "bf16", rate: 120.0},
        {**row, "mode": "unfused x4", "precision": "fp32", rate: 110.0},
        {**row, "mode": "fused K=16", "convs": "streams", "precision": "bf16", rate: 250.0},
        {**row, "mode": "fused K=4", "convs": "streams", "precision": "bf16", rate: 150.0},
        {**row, "mode": "fused K=4", "convs": "members", "precision": "bf16", "error": "a failed row"},
        {**row, "mode": "fused K=4", "convs": "grouped", "graphs": "off", rate: 999.0},
    ]}
    parsed = plot.parse_run(run)
    assert parsed["baseline"] == 100.0 and parsed["graphs"] == "on"
    # Failed rows and eager rows of a graphed run are left out; K in order.
    assert parsed["fused"] == {"fused, bf16, streams": [(4, 1.5), (16, 2.5)]}
    assert parsed["packed"] == {"4 unfused trials packed, fp32": 1.1}
    assert plot.parse_run(run, {"members"})["fused"] == {}

    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert plot.main([str(path), "--out", str(tmp_path / "figure.png")]) == 0
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    # No fp32 single trial to measure against: a clear error, no picture.
    path.write_text(json.dumps({**run, "rows": run["rows"][1:]}))
    assert plot.main([str(path), "--out", str(tmp_path / "none.png")]) == 2
    assert not (tmp_path / "none.png").exists()


def test_the_refill_benchmark_trains_every_configuration_both_ways(load_bench, data_dir):
    """bench/refill.py, small: both schedules train every configuration with the same ASHA rule;
    with many more configurations than a group holds, refilled slots keep it fuller."""
    from genmodels.data import load_dataset
    from genmodels.loop import TrainConfig

    refill = load_bench("refill")
    rng = refill.np.random.default_rng(0)
    configs = [refill.VAEConfig(**refill.draw(refill.SPACES["vae"], rng)) for _ in range(12)]
    data = load_dataset("mnist", data_dir)
    train_cfg = TrainConfig(device="cpu", seed=0, epochs=10**6, train_subset=256, batch_size=64)
    shrink, refilled = (refill.run(r, configs, 2, 2, data, train_cfg, width=64) for r in (False, True))
    assert shrink.ended == refilled.ended == 12
    assert shrink.group_epochs > refilled.group_epochs  # the same configurations in fewer epochs
    assert refilled.members_a_step > shrink.members_a_step
