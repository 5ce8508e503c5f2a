"""The report's figures (``harness/report/figures.py``) draw what their captions say."""

from __future__ import annotations

import pandas as pd

from harness.report import figures


def test_the_recovery_curve_draws_bits_per_byte_first_and_leaves_out_tasks_with_no_value(tmp_path, monkeypatch):
    """At small scale the accuracies sit at chance: the training-cost curve leads with held-out bits per
    byte (the teacher dashed), then one panel per task that has an accuracy."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])

    def row(method, fraction, task, metric, value):
        return dict(method=method, fraction=fraction, task=task, metric=metric, value=value, stderr=0.01)

    frame = pd.DataFrame(
        [
            row("softmax", None, "piqa_local", "acc", 0.5),
            row("softmax", None, "heldout_ppl", "bits_per_byte", 0.9),
            row("softmax", None, "heldout_ppl", "word_perplexity", 400.0),
            row("softmax", None, "wsc", "acc", None),
            *(row("dijiang", f, "piqa_local", "acc", 0.52) for f in (0.25, 0.5)),
            *(row("dijiang", f, "heldout_ppl", "bits_per_byte", 2 - f) for f in (0.25, 0.5)),
        ]
    )
    figures.plot_recovery(frame, tmp_path / "curve")
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["held-out bits per byte (lower is better)", "piqa_local"]
    bpb = fig.axes[0]
    assert list(bpb.lines[0].get_ydata()) == [1.75, 1.5]  # dijiang's curve, smallest budget first
    assert bpb.get_ylabel() == "bits_per_byte" and any(line.get_linestyle() == "--" for line in bpb.lines)
