"""The trainer's fast CPU path (fer_edge.training.fastpath, ema, speed): each piece, its fallback, and the speed
table's shape on a tiny run. Tiny models and 16 px inputs keep the whole file to a few seconds."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
try:
    from fer_edge.models.timm_compat import import_timm
    import_timm()
except ImportError as exc:  # pragma: no cover - training extra not installed
    pytest.skip(f"timm unavailable ({exc}); pip install 'fer-edge[train]'", allow_module_level=True)

from fer_edge.training import fastpath as FP  # noqa: E402
from fer_edge.training import speed as S  # noqa: E402
from fer_edge.training import train as T  # noqa: E402
from fer_edge.training.ema import ModelEma  # noqa: E402

CPU = torch.device("cpu")


def small_net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 7))


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    monkeypatch.setattr(FP, "_reported", set())


def test_channels_last_model_and_batch():
    model = small_net().to(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = FP.to_channels_last(torch.rand(2, 1, 8, 8), True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert FP.to_channels_last(torch.rand(2, 1, 8, 8), False).is_contiguous()
    assert FP.use_channels_last("auto", CPU) and not FP.use_channels_last(False, CPU)


def test_foreach_ema_equals_loop_ema():
    torch.manual_seed(0)
    model = small_net()
    loop, fe = ModelEma(model, 0.9, foreach=False), ModelEma(model, 0.9, foreach=True)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.rand(4, 1, 8, 8))  # moves BatchNorm running stats and num_batches_tracked
        loop.update(model)
        fe.update(model)
    a, b = loop.state_dict(), fe.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-7), k
    assert int(b["1.num_batches_tracked"]) == 5 and fe.updates == loop.updates == 5


def test_optimizer_selection_fused_and_fallback(monkeypatch, capsys):
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt, note = FP.new_adamw(params, 1e-3, True, CPU)
    assert opt.defaults["fused"] and note == "fused AdamW"
    opt, note = FP.new_adamw(params, 1e-3, False, CPU)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"] and "default" in note
    monkeypatch.setattr(FP, "fused_unavailable_reason", lambda device: "no fused kernel here")
    for _ in range(2):
        opt, note = FP.new_adamw(params, 1e-3, True, CPU)
    assert opt.defaults["foreach"] and not opt.defaults["fused"] and "no fused kernel here" in note
    assert capsys.readouterr().out.count("fused AdamW unavailable (no fused kernel here)") == 1  # logged once


def test_compile_fallback_when_compile_raises(monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(torch, "compile", broken)
    model = small_net()
    forward, note = FP.compile_model(model, True, CPU)
    assert forward is model and "inductor exploded" in note
    assert "torch.compile unavailable" in capsys.readouterr().out
    step = T.TrainStep(model, forward, torch.optim.AdamW(model.parameters()), ModelEma(model))
    _, loss = step(torch.rand(4, 1, 8, 8), torch.arange(4))
    assert torch.isfinite(loss)


def test_lazy_compile_failure_falls_back_to_eager(capsys):
    model = small_net()

    def failing_forward(x):
        raise RuntimeError("C++ compile failed")
    step = T.TrainStep(model, failing_forward, torch.optim.AdamW(model.parameters()), None)
    for _ in range(2):
        _, loss = step(torch.rand(4, 1, 8, 8), torch.arange(4))
    assert step.forward is model and torch.isfinite(loss)
    assert capsys.readouterr().out.count("torch.compile failed on the first step") == 1


def test_compile_unavailable_without_a_c_compiler(monkeypatch):
    monkeypatch.setattr(FP.shutil, "which", lambda name: None)
    assert "no C/C++ compiler" in FP.compile_unavailable_reason(CPU)
    forward, note = FP.compile_model(small_net(), True, CPU)
    assert isinstance(forward, torch.nn.Sequential) and "no C/C++ compiler" in note


def test_compile_auto_skips_short_runs():
    assert FP.want_compile("auto", FP.COMPILE_MIN_STEPS) and not FP.want_compile("auto", 10)
    assert FP.want_compile(True, 1) and not FP.want_compile(False, 10 ** 6)


def test_lr_scales_linearly_from_reference_batch():
    assert FP.effective_lr({"lr": 0.002, "batch_size": 128, "lr_reference_batch": 64}) == pytest.approx(0.004)
    assert FP.effective_lr({"lr": 0.002, "batch_size": 128, "lr_reference_batch": 0}) == 0.002
    assert FP.effective_lr({"lr": 0.002, "batch_size": 32}) == 0.002  # runs saved before the key
    cfg = T.load_config(None)
    assert cfg["batch_size"] == 128 and FP.effective_lr(cfg) == pytest.approx(0.004)
    assert cfg["channels_last"] is True and cfg["fused_optimizer"] and cfg["foreach_ema"] and cfg["compile"] == "auto"


def test_speed_table_structure(monkeypatch):
    tiny = [S.SpeedConfig(S.BASELINE.name, 4, False, False, False, False),
            S.SpeedConfig("fast, batch 8", 8, True, True, True, False),
            S.SpeedConfig("fast+compile, batch 8", 8, True, True, True, True)]
    monkeypatch.setattr(S, "compile_unavailable_reason", lambda device: "no compiler (test)")
    rows = S.measure(tiny, size=16, block=1, rounds=2, warmup=1, threads=1)
    assert [r["name"] for r in rows] == [c.name for c in tiny]
    assert rows[0]["vs_baseline"] == 1.0 and rows[1]["images_per_s"] > 0 and rows[1]["timed_steps"] == 2
    assert rows[2]["skipped"] == "no compiler (test)"
    table = S.format_table(rows)
    assert table[0].startswith("| configuration | images/s") and len(table) == 2 + len(tiny)
    assert "skipped: no compiler (test)" in table[-1]


def test_loss_curve_comparison():
    a = [2.0] * 100
    res = S.compare_curves(a, [2.01] * 100, window=50, tolerance=0.05)
    assert res["windows"] == 2 and res["passed"] and res["max_abs_diff_windowed"] == pytest.approx(0.01)
    assert not S.compare_curves(a, [2.2] * 100, window=50, tolerance=0.05)["passed"]


def test_loss_check_measures_its_tolerance_from_a_second_seed(tmp_path):
    """Without a given tolerance the baseline runs again from seed 1: the threshold is that run-to-run spread,
    and the report carries all three curves."""
    res = S.loss_check(steps=20, batch=16, size=32, threads=1, window=10, data_dir=str(tmp_path), compile=False)
    assert res["tolerance_source"].startswith("measured") and res["windows"] == 2
    assert len(res["seed1_windows"]) == 2 and res["seed1_windows"] != res["baseline_windows"]
    spread = max(abs(a - b) for a, b in zip(res["baseline_windows"], res["seed1_windows"]))
    assert res["seed_spread"] == pytest.approx(spread, abs=1e-4) and spread > 0
    assert res["tolerance"] == pytest.approx(S.NOISE_FACTOR * spread, abs=2e-4)
    assert res["passed"] == (res["max_abs_diff_windowed"] <= res["tolerance"])
    text = "\n".join(S.markdown({"loss_check": {**res, "command": "fer-train speed --loss-check 20"}}))
    assert "the baseline's own max difference from seed 1" in text and "baseline, seed 1 |" in text
