"""The benchmark sweep (``python -m harness bench``): results file, resume, skipped points, bad input,
the slope/crossover analysis and the plot. Minuscule sizes; no assertion on wall-clock time."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from harness.bench import measure
from harness.bench.sweep import Predictor, Sweep
from harness.cli import main as cli_main
from harness.core import registry
from harness.core.architecture import Architecture, UnsupportedMethodError
from harness.layers.linear_mixer import LinearAttentionMixer
from harness.report.bench_analysis import analyse, crossover, fit_slope

METADATA = ("git_commit", "torch", "device", "device_name", "cpu", "threads", "dtype", "date")
FAST = [
    "--shapes",
    "tiny",
    "--decode-tokens",
    "4",
    "--min-time-s",
    "0",
    "--max-repeats",
    "2",
    "--budget-s",
    "60",
    "--threads",
    "1",
]


class _Linear(LinearAttentionMixer):
    """elu + 1 linear attention (Katharopoulos et al. 2020) — a stand-in linear method for the tests."""

    def feature_map(self, x, position_ids, is_query):
        return torch.nn.functional.elu(x) + 1


class _Fixed(_Linear):
    """A method with a fixed maximum length, like Linformer."""

    def forward(self, x, *, position_ids=None, state=None, form=None, attention_mask=None):
        self.check_length(x.shape[1] if position_ids is None else int(position_ids.max()) + 1)
        return super().forward(x, position_ids=position_ids, state=state, form=form, attention_mask=attention_mask)


class _Broken(_Linear):
    def forward(self, *args, **kwargs):
        raise RuntimeError("deliberately broken")


class _WholeModel(Architecture):
    """A whole architecture that cannot build a model for the requested shape."""

    @classmethod
    def build(cls, reference, *, match="params", **options):
        raise UnsupportedMethodError("bench-model has no form for this shape")

    @classmethod
    def state_size(cls, config, seq_len):
        return 0


@pytest.fixture
def test_methods(monkeypatch):
    """Register the stand-in methods for one test only (never seen by other test modules)."""
    registry.list_methods()  # load the real packages first
    for name, cls in (
        ("bench-linear", _Linear),
        ("bench-fixed", _Fixed),
        ("bench-broken", _Broken),
        ("bench-model", _WholeModel),
    ):
        _register(monkeypatch, name, cls)


def _register(monkeypatch, name: str, cls: type) -> None:
    monkeypatch.setattr(cls, "name", name)
    monkeypatch.setitem(registry._REGISTRY, name, cls)


def bench(tmp_path: Path, *args: str) -> int:
    return cli_main(["bench", "--out", str(tmp_path), "--name", "t", *args])


def rows(tmp_path: Path) -> list[dict]:
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["format"] == "harness-bench/1"
    return doc["rows"]


def test_sweep_writes_json_summary_plot_and_resumes(tmp_path, test_methods, monkeypatch):
    assert bench(tmp_path, "--methods", "softmax,bench-linear", "--lengths", "32,64", *FAST) == 0
    got = rows(tmp_path)
    assert len(got) == 2 * 2 * 3  # methods x lengths x phases
    for r in got:
        assert r["status"] == "ok", r.get("skip_reason")
        for field in METADATA:
            assert r[field] not in (None, ""), field
        assert r["tokens_per_s"] > 0 and r["time_median_s"] > 0 and r["repeats"] >= 1
        assert r["mem_peak_bytes"] >= 0 and "peak resident memory" in r["mem_method"]
        assert r["tokens"] == (4 if r["phase"] == "decode" else r["seq_len"])
    cache = {(r["method"], r["seq_len"]): r for r in got if r["phase"] == "prefill"}
    for r in cache.values():
        assert r["cache_numel"] == r["state_size_declared"]  # measured MixerCache.numel() = declared
    assert cache[("softmax", 64)]["cache_numel"] == 2 * cache[("softmax", 32)]["cache_numel"]  # KV grows
    assert cache[("bench-linear", 64)]["cache_numel"] == cache[("bench-linear", 32)]["cache_numel"]  # state flat
    for name in ("t.md", "t-summary.json", "t-tiny.png", "t-tiny.pdf"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "softmax" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t-tiny.png").read_bytes()[:4] == b"\x89PNG"

    # re-running the same sweep measures nothing again
    def no_measure(*a, **k):
        raise AssertionError("an existing point was measured again")

    monkeypatch.setattr(Sweep, "_measure", no_measure)
    assert bench(tmp_path, "--methods", "softmax,bench-linear", "--lengths", "32,64", *FAST, "--no-plot") == 0
    assert sorted(map(json.dumps, rows(tmp_path))) == sorted(map(json.dumps, got))
    # a longer sweep only adds the new length
    monkeypatch.undo()
    _register(monkeypatch, "bench-linear", _Linear)
    assert bench(tmp_path, "--methods", "softmax,bench-linear", "--lengths", "32,64,128", *FAST, "--no-plot") == 0
    after = rows(tmp_path)
    old = {json.dumps(r, sort_keys=True) for r in got}
    new = [r for r in after if json.dumps(r, sort_keys=True) not in old]
    assert len(after) == 18 and {r["seq_len"] for r in new} == {128}


def test_unsupported_failing_and_model_kind_points_are_skipped(tmp_path, test_methods):
    args = ["--methods", "bench-fixed,bench-broken,bench-model", "--lengths", "32,64", "--max-seq-len", "40"]
    assert bench(tmp_path, *args, *FAST, "--no-plot") == 0
    by = {(r["method"], r["seq_len"], r["phase"]): r for r in rows(tmp_path)}
    for phase in ("prefill", "decode", "train"):
        assert by[("bench-fixed", 32, phase)]["status"] == "ok"  # 32 + 4 decoded tokens <= 40
        r = by[("bench-fixed", 64, phase)]
        assert (r["status"], r["skip_kind"]) == ("skipped", "unsupported")
        assert "max_seq_len=40" in r["skip_reason"]
        r = by[("bench-broken", 32, phase)]
        assert r["skip_kind"] == "error" and "deliberately broken" in r["skip_reason"]
        r = by[("bench-model", 64, phase)]
        assert r["skip_kind"] == "kind" and "no form for this shape" in r["skip_reason"]
    assert "Skipped points" in (tmp_path / "t.md").read_text()


def test_over_budget_point_is_skipped_then_retried_with_a_larger_budget(tmp_path):
    common = ["--methods", "softmax", "--shapes", "tiny", "--lengths", "16,32", "--phases", "prefill", "--no-plot"]
    assert bench(tmp_path, *common, "--budget-s", "1e-9", "--min-time-s", "0") == 0
    by = {r["seq_len"]: r for r in rows(tmp_path)}
    assert by[16]["status"] == "ok"  # nothing to predict from: measured (one repeat)
    assert by[32]["skip_kind"] == "budget" and "predicted" in by[32]["skip_reason"]
    assert bench(tmp_path, *common, "--budget-s", "60", "--min-time-s", "0") == 0
    by2 = {r["seq_len"]: r for r in rows(tmp_path)}
    assert by2[32]["status"] == "ok" and by2[16] == by[16]


def test_unknown_method_shape_and_phase_give_clear_messages(tmp_path, capsys):
    assert bench(tmp_path, "--methods", "nope", "--lengths", "16") == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "registered methods:" in err and "softmax" in err
    assert bench(tmp_path, "--methods", "softmax", "--shapes", "nosuch", "--lengths", "16") == 2
    err = capsys.readouterr().err
    assert "unknown shape 'nosuch'" in err and "known shapes:" in err and "pythia-410m" in err
    # a bad name among good ones is reported and skipped; the rest runs
    ok = ["--methods", "softmax,nope", "--shapes", "tiny,nosuch", "--phases", "prefill,warp", "--lengths", "16"]
    assert bench(tmp_path, *ok, "--min-time-s", "0", "--no-plot") == 0
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "unknown shape 'nosuch'" in err and "warp" in err
    assert {(r["method"], r["shape"], r["phase"]) for r in rows(tmp_path)} == {("softmax", "tiny", "prefill")}


def test_bad_length_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench(tmp_path, "--lengths", "512,-3")
    assert "positive integer" in capsys.readouterr().err


def test_slope_fit_and_crossover_on_synthetic_power_laws():
    Ls = [256, 512, 1024, 2048, 4096]
    quad = [3e-7 * L**2 for L in Ls]
    lin = [2e-4 * L for L in Ls]
    assert fit_slope(Ls, quad)["slope"] == pytest.approx(2.0, abs=1e-9)
    assert fit_slope(Ls, lin)["slope"] == pytest.approx(1.0, abs=1e-9)
    assert fit_slope([512], [1.0]) is None
    # tokens/s ratio of the linear method over softmax = t_softmax / t_linear = 1.5e-3 L: 1 at L = 666.7
    ratio = [q / li for q, li in zip(quad, lin)]
    c = crossover(Ls, ratio, fit_slope(Ls, lin), fit_slope(Ls, quad))
    assert c["kind"] == "crosses" and c["length"] == pytest.approx(2000 / 3, rel=1e-6)
    short = [64, 128, 256]  # never crosses inside the range: extrapolated from the fitted power laws
    r_short = [1.5e-3 * L for L in short]
    c = crossover(
        short, r_short, fit_slope(short, [2e-4 * L for L in short]), fit_slope(short, [3e-7 * L**2 for L in short])
    )
    assert c["kind"] == "never_faster" and c["extrapolated"] == pytest.approx(2000 / 3, rel=1e-6)
    assert crossover([1024, 2048], [1.5, 2.0], None, None)["kind"] == "always_faster"
    noisy = crossover([512, 1024, 2048, 4096], [0.7, 1.1, 0.9, 1.4], None, None)  # the crossing for good
    assert noisy["kind"] == "crosses" and 2048 < noisy["length"] < 4096
    # the same through analyse() on result rows
    synth = []
    for method, times in (("softmax", quad), ("lin", lin)):
        for L, t in zip(Ls, times):
            synth.append(
                dict(
                    shape="s",
                    method=method,
                    phase="prefill",
                    seq_len=L,
                    status="ok",
                    time_median_s=t,
                    tokens_per_s=L / t,
                    mem_peak_bytes=L * 10,
                    run_id="r",
                )
            )
    an = analyse(synth)
    slope = {s["method"]: s["time_slope_tail"] for s in an["slopes"]}
    assert slope["softmax"] == pytest.approx(2.0) and slope["lin"] == pytest.approx(1.0)
    (cr,) = an["crossovers"]
    assert cr["kind"] == "crosses" and math.isclose(cr["length"], 2000 / 3, rel_tol=1e-6)


def test_timing_summary_repeat_plan_prediction_and_deadline():
    s = measure.Timing([4.0, 1.0, 3.0, 2.0]).summary()
    assert s["time_median_s"] == 2.5 and s["time_min_s"] == 1.0 and s["time_max_s"] == 4.0
    assert s["time_iqr_s"] == pytest.approx(1.5)
    assert measure.Timing([1.0]).summary()["time_iqr_s"] is None
    assert measure.plan_repeats(0.01, 10, 0.5, 2, 5) == 5  # cheap: capped at max_repeats
    assert measure.plan_repeats(1.0, 10, 0.5, 3, 5) == 3  # min_repeats
    assert measure.plan_repeats(4.0, 5, 0.5, 3, 5) == 1  # budget allows one
    p = Predictor()
    p.add(("s", "m", "prefill"), 1024, 1.0, 100.0)
    p.add(("s", "m", "prefill"), 2048, 4.0, 200.0)
    t, mem = p.predict(("s", "m", "prefill"), 4096)
    assert t == pytest.approx(16.0) and mem == pytest.approx(400.0)
    if measure.rss_peak_supported():  # peak resident memory of a run that touches 64 MB, then frees it
        _, peak, _ = measure.run_with_memory(lambda: torch.ones(16 * 2**20).sum(), torch.device("cpu"))
        assert 60 * 2**20 <= peak <= 200 * 2**20
    with pytest.raises(measure.PointTimeout):
        with measure.deadline(0.2):
            end = time.perf_counter() + 5
            while time.perf_counter() < end:
                time.sleep(0.01)


def test_unreadable_results_file_is_never_overwritten_and_fresh_keeps_a_backup(tmp_path, capsys):
    (tmp_path / "t.json").write_text("{not json")
    args = ["--methods", "softmax", "--shapes", "tiny", "--lengths", "16", "--phases", "prefill", "--no-plot"]
    assert bench(tmp_path, *args) == 2
    assert "--fresh" in capsys.readouterr().err
    assert (tmp_path / "t.json").read_text() == "{not json"
    assert bench(tmp_path, *args, "--fresh", "--min-time-s", "0") == 0
    (backup,) = tmp_path.glob("t.json.bak-*")
    assert backup.read_text() == "{not json"
    assert [r["status"] for r in rows(tmp_path)] == ["ok"]


def test_supervisor_records_stuck_and_crashed_points_and_restarts(tmp_path, monkeypatch):
    """The command-line supervisor: a child stuck past its deadline is killed, one that dies is
    noticed; either way the point is recorded as skipped and the sweep restarts (fake children)."""
    import signal as _signal

    from harness.bench import supervise as sup

    store_path, beat = tmp_path / "t.json", tmp_path / "beat.json"
    row = {"settings_key": "k", "shape": "tiny", "method": "m", "seq_len": 64, "phase": "train", "status": None}
    launches: list[list[str]] = []

    class FakeChild:
        def __init__(self, argv):
            launches.append(argv)
            self.n = len(launches)
            self.returncode = None
            if self.n == 1:  # stuck: its deadline passed long ago
                beat.write_text(json.dumps({"row": row, "deadline": time.time() - 100, "hard_s": 60}))
            elif self.n == 2:  # dies by itself inside a point
                beat.write_text(
                    json.dumps({"row": {**row, "seq_len": 128}, "deadline": time.time() + 100, "hard_s": 60})
                )
                self.returncode = -_signal.SIGSEGV

        def poll(self):
            if self.n == 3:
                self.returncode = 0
            return self.returncode

        def kill(self):
            self.returncode = -_signal.SIGKILL

        def wait(self):
            return self.returncode

    monkeypatch.setattr(sup.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(sup.time, "sleep", lambda s: None)
    assert sup.supervise(["bench"], beat, store_path) == 0
    assert len(launches) == 3
    got = {r["seq_len"]: r for r in json.loads(store_path.read_text())["rows"]}
    assert got[64]["skip_kind"] == "timeout" and "hard deadline" in got[64]["skip_reason"]
    assert got[128]["skip_kind"] == "error" and "SIGSEGV" in got[128]["skip_reason"]


def test_batch_sizes_sweep_each_batch_into_one_file_with_sections_and_plots(tmp_path, capsys):
    args = ["--methods", "softmax", "--lengths", "16,32", "--phases", "prefill,decode", "--batch-sizes", "2,1"]
    assert bench(tmp_path, *args, *FAST, "--peak-tflops", "0.1", "--peak-bandwidth-gbs", "5") == 0
    got = rows(tmp_path)
    assert sorted({r["batch"] for r in got}) == [1, 2] and len(got) == 2 * 2 * 2
    assert len({r["settings_key"] for r in got}) == 2  # the batch size is part of the settings
    by = {(r["batch"], r["seq_len"], r["phase"]): r for r in got}
    for L in (16, 32):
        for phase in ("prefill", "decode"):
            one, two = by[(1, L, phase)], by[(2, L, phase)]
            assert one["status"] == two["status"] == "ok"
            assert two["tokens_per_s"] == pytest.approx(2 * two["tokens"] / two["time_median_s"])
            assert one["cache_numel"] == two["cache_numel"]  # per sequence
    md = (tmp_path / "t.md").read_text()
    assert "## tiny (whole model), batch 1" in md and "## tiny (whole model), batch 2" in md
    assert (tmp_path / "t-tiny.png").is_file() and (tmp_path / "t-tiny-b2.png").is_file()
    out = capsys.readouterr().out
    assert out.index("batch 1:") < out.index("batch 2:")  # smaller batches first
    # resuming one batch size reuses its points, the report still covers the requested ones
    assert bench(tmp_path, "--methods", "softmax", "--lengths", "16,32", "--phases", "prefill,decode", *FAST) == 0
    assert len(rows(tmp_path)) == 8
    assert "batch 2" not in (tmp_path / "t.md").read_text()


def test_batch_sizes_and_peaks_are_validated(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench(tmp_path, "--batch-sizes", "1,0")
    assert "positive integer" in capsys.readouterr().err
    assert bench(tmp_path, "--methods", "softmax", "--shapes", "tiny", "--lengths", "16", "--peak-tflops", "1") == 2
    assert "--peak-bandwidth-gbs" in capsys.readouterr().err
    from harness.bench.cli import _select_methods

    assert _select_methods("all", print)[-1] == "hf-softmax"
    assert _select_methods("softmax,hf-softmax", print) == ["softmax", "hf-softmax"]
