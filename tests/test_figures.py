"""The report's figures draw what their captions say."""

from __future__ import annotations

import pandas as pd

from harness.report import figures
from harness.report.report import recovery_section


def test_the_recovery_section_draws_bits_per_byte_against_the_budget(tmp_path, monkeypatch):
    """At small scale the accuracies sit at chance: the report's recovery-curve section adds held-out
    bits per byte against the budget, drawn from the experiment's results (the teacher dashed); a
    results table without bits per byte gets no such figure."""
    drawn = []
    save = figures.save
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or save(fig, stem))

    def row(method, fraction, task, metric, value):
        return dict(method=method, fraction=fraction, seed=0, task=task, metric=metric, value=value, stderr=None)

    results = pd.DataFrame(
        [
            row("softmax", None, "piqa_local", "acc", 0.5),
            row("softmax", None, "heldout_ppl", "bits_per_byte", 0.9),
            row("softmax", None, "heldout_ppl", "word_perplexity", 400.0),
            *(row("dijiang", f, "piqa_local", "acc", 0.52) for f in (0.25, 0.5)),
            *(row("dijiang", f, "heldout_ppl", "bits_per_byte", 2 - f) for f in (0.25, 0.5)),
        ]
    )
    out = tmp_path / "recovery_curve"
    out.mkdir()
    results.to_csv(out / "results.csv", index=False)
    table = pd.DataFrame({"method": ["softmax", "dijiang", "dijiang"], "fraction": [None, 0.25, 0.5], "seed": 0})
    table.assign(**{"heldout_ppl bpb": [0.9, 1.75, 1.5]}).to_csv(out / "table.csv", index=False)
    lines = recovery_section(out)
    assert "![held-out bits per byte against the budget](recovery_curve/recovery_bpb.png)" in lines
    assert (out / "recovery_bpb.png").stat().st_size > 0 and not (out / "recovery_bpb.pdf").exists()
    (fig,) = drawn
    (ax,) = [a for a in fig.axes if a.axison]
    assert ax.get_ylabel() == "bits_per_byte" and list(ax.lines[0].get_ydata()) == [1.75, 1.5]
    assert any(line.get_linestyle() == "--" and set(line.get_ydata()) == {0.9} for line in ax.lines)
    results[results["metric"] == "acc"].to_csv(out / "results.csv", index=False)
    assert not any("recovery_bpb" in line for line in recovery_section(out)) and len(drawn) == 1
