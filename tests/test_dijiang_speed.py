"""The speed benchmark runs end to end and writes its files (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from dijiang import speed
from dijiang.speed import OpInputs, chunk, official_quadratic


def test_benchmarked_ops_compute_the_same_function_as_the_mixers():
    """The timed chunk op is linear attention with WDCF features; the timed official op equals our
    chunk form of the official computation (so the speed-up compares like with like)."""
    from harness.core.ops.linear_attention import linear_attention

    x = OpInputs(100, 2, 16, torch.float64, torch.device("cpu"))
    with torch.no_grad():
        fq, fk = x.features()
        ref, _ = linear_attention(fq, fk, x.v, form="parallel", log_decay=x.decay())
        assert torch.allclose(chunk(x, 16), ref, rtol=1e-10, atol=1e-12)
        fq = x.official_features(x.q, True) * x.d1
        fk = x.official_features(x.k, False) * x.d2
        ours, _ = linear_attention(fq, fk, x.v, form="chunk", chunk_size=16)
        assert torch.allclose(official_quadratic(x), ours, rtol=1e-10, atol=1e-12)


def test_speed_run_writes_json_and_markdown(tmp_path):
    res = speed.run(
        lengths=(64,),
        heads=2,
        head_dim=16,
        reps=1,
        official_reps=1,
        decode_contexts=(16, 32),
        decode_steps=2,
        chunk_size=16,
        peak_sizes=(64,),
    )
    assert {r["method"] for r in res["ops"]} == {"sdpa", "official", "chunk", "chunk-core"}
    assert res["meta"]["threads"] >= 1 and res["meta"]["torch"] == torch.__version__
    assert res["decode"][0]["ours_state_bytes"] == res["decode"][1]["ours_state_bytes"] == 2 * 16 * 16 * 4
    js, md = speed.save(res, tmp_path)
    assert json.loads(js.read_text())["config"]["lengths"] == [64]
    assert "| chunk | 64 |" in md.read_text() and (tmp_path / "latest.md").exists()
    with pytest.raises(FileExistsError):
        speed.save(res, tmp_path)  # never overwritten
