"""Teachers worth converting: train a teacher shape until more tokens stop paying, then ship it.

DiJiang converts Pythia's released checkpoints (paper Sec. 4, Table 1), which were trained to the end
of their schedule on 300B tokens. A stand-in teacher trained here must be converged too, or a
conversion's gap to it measures the teacher's unfinished training as much as the method.

:func:`converge` trains the shape from scratch on budgets doubling from ``start_tokens``. Each budget
is a run of its own with its full warm-up + cosine schedule, so every point of the curve is a finished
model, not a snapshot mid-schedule. It stops at the first doubling that improves validation bits per
byte by less than ``threshold`` (2 %). The budget before that doubling is the converged one: it is
within ``threshold`` of twice its tokens. Selection reads the **validation** split only; the test
split that the tables score stays unseen.

:func:`ship` copies that run's model into ``teachers/<profile>/<name>-v<N>/``, a new version each
time, never over an old one. Beside the safetensors weights go ``teacher.json``: training config,
tokens, the corpus hash, the weights' sha256, the whole curve and its wall time. ``curve.csv`` holds
the curve. A profile names the shipped directory under its teacher's ``shipped:`` key. The pipeline
then converts the shipped weights, after :func:`harness.pipeline.shipped.verify` checks them.

``python -m harness teachers --profile tiny --teacher tiny-m`` runs both (:mod:`harness.cli.teachers`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.pipeline.shipped import sha256_file, verify
from harness.pipeline.spec import Profile, Teacher
from harness.pipeline.stages import Context, Run, run_training, teacher_config
from harness.util.errors import UserError
from harness.util.io import atomic_write_json, atomic_write_text
from harness.util.provenance import REPO_ROOT, commit_label

#: where shipped teachers live (``teachers/<profile>/<name>-v<N>/``)
TEACHERS_DIR = REPO_ROOT / "teachers"
#: a doubling of tokens that improves validation bits per byte by less than this has stopped paying
THRESHOLD = 0.02
#: validation blocks scored per point of the curve (128-token blocks: 32K tokens at the tiny profile)
EVAL_BLOCKS = 256
#: the files of a shipped teacher's model (weights, config, tokenizer)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class CurvePoint:
    """One finished teacher run: its tokens, validation bits per byte and what the doubling gained."""

    tokens: int
    val_bpb: float
    gain: float | None  # relative improvement over the previous point (None for the first)
    wall_time_s: float
    run_dir: str


def bits(nats: float) -> float:
    """Bits per token from nats per token: bits per byte for the byte-level tokenizer."""
    return nats / math.log(2)


def converge(
    ctx: Context,
    t: Teacher,
    *,
    start_tokens: int,
    threshold: float = THRESHOLD,
    max_doublings: int = 6,
    seed: int = 0,
) -> tuple[list[CurvePoint], list[Run], bool]:
    """Train ``t``'s shape on ``start_tokens``, ``2 x start_tokens``, ... until a doubling gains less
    than ``threshold`` in validation bits per byte (or ``max_doublings`` is reached). Returns the
    curve, its runs and whether it converged (:func:`chosen` picks the run to ship)."""
    curve: list[CurvePoint] = []
    runs: list[Run] = []
    tokens = int(start_tokens)
    for _ in range(max_doublings + 1):
        point, run = train_point(ctx, t, tokens, curve[-1].val_bpb if curve else None, seed)
        curve.append(point)
        runs.append(run)
        if point.gain is not None and point.gain < threshold:
            return curve, runs, True
        tokens *= 2
    return curve, runs, False


def train_point(
    ctx: Context, t: Teacher, tokens: int, previous_bpb: float | None, seed: int = 0
) -> tuple[CurvePoint, Run]:
    """One point of the curve: ``t``'s shape trained from scratch on ``tokens`` (a finished run with its
    own schedule; an earlier or interrupted run of the same configuration is reused or resumed), its
    validation bits per byte, and its gain over ``previous_bpb``."""
    cfg = teacher_config(ctx, t, seed, tokens=tokens)
    cfg.eval_blocks = EVAL_BLOCKS
    run = run_training(ctx, f"curve-{t.name}-t{tokens}-s{seed}", cfg, "softmax")
    if run.result.val_loss is None:
        raise UserError(f"the corpus {ctx.profile.data!r} has no validation split to select a teacher on.")
    bpb = bits(run.result.val_loss)
    gain = None if previous_bpb is None else (previous_bpb - bpb) / previous_bpb
    return CurvePoint(tokens, bpb, gain, run.result.wall_time_s, run.result.out_dir), run


def retrain_command(profile: str, teacher: str, start_tokens: int, max_doublings: int, ship_tokens: int | None) -> str:
    """The command that retrains a shipped teacher's whole curve and ships the same budget."""
    return " ".join(
        ["python -m harness teachers", f"--profile {profile}", f"--teacher {teacher}"]
        + [f"--start-tokens {int(start_tokens)}", f"--max-doublings {int(max_doublings)}"]
        + ([f"--ship-tokens {int(ship_tokens)}"] if ship_tokens else [])
    )


def shipped_curve(t: Teacher) -> tuple[Path, dict, list[CurvePoint]]:
    """The shipped teacher's folder, its ``teacher.json`` and its curve, after
    :func:`~harness.pipeline.shipped.verify` checks the weights' sha256, the shape and the tokens."""
    if not t.shipped:
        raise UserError(f"teacher {t.name!r} names no shipped directory (`shipped:` in the profile); it has no curve.")
    folder = verify(t)
    meta = json.loads((folder / "teacher.json").read_text())
    return folder, meta, [CurvePoint(**p) for p in meta["curve"]]


def extend(ctx: Context, t: Teacher, seed: int = 0) -> CurvePoint:
    """Add the next doubling to the shipped teacher's curve: train ``t``'s shape on twice the curve's
    largest budget and append the point to its ``teacher.json`` and ``curve.csv`` (atomically). The
    shipped weights and budget do not change (:func:`~harness.pipeline.shipped.verify` checks them
    first); ``retrain`` then names the longer curve, and ``converged`` says whether the shipped budget is
    now the curve's converged one (:func:`converged_at`). Measures whether a teacher shipped below
    convergence for cost is converging; a curve that has converged is not extended."""
    folder, meta, curve = shipped_curve(t)
    done = converged_at(curve, meta["threshold"])
    if done is not None:
        raise UserError(
            f"teacher {t.name!r}: its curve converged at {done:,} tokens (the doubling after it gained less than "
            f"{meta['threshold']:.0%}); another doubling would not pay."
        )
    point, _ = train_point(ctx, t, 2 * curve[-1].tokens, curve[-1].val_bpb, seed)
    curve.append(point)
    meta["curve"] = [asdict(p) for p in curve]
    meta["curve_wall_time_s"] = sum(p.wall_time_s for p in curve)
    meta["converged"] = converged_at(curve, meta["threshold"]) == int(meta["tokens"])
    meta["retrain"] = retrain_command(
        ctx.profile.name, t.name, curve[0].tokens, len(curve) - 1, None if meta["converged"] else int(meta["tokens"])
    )
    atomic_write_json(folder / "teacher.json", meta, indent=1, sort_keys=False)
    atomic_write_text(folder / "curve.csv", curve_csv(curve))
    return point


def ship_point(ctx: Context, t: Teacher, tokens: int, seed: int = 0, root: Path = TEACHERS_DIR) -> Path:
    """Ship the shipped teacher's curve point of ``tokens`` as a teacher of its own,
    ``<profile>/<name>-<tokens in Mi>m-v<N>`` (e.g. ``tiny-m-64m-v1``): a more trained teacher of the same
    shape, to measure whether a conversion's gap depends on how far its teacher trained. The point's run
    is reused, or resumed or retrained when this machine lacks it (:func:`train_point`); its curve is the
    shipped teacher's, and it is called converged when it is the curve's converged budget
    (:func:`converged_at`)."""
    _, meta, curve = shipped_curve(t)
    at = [i for i, p in enumerate(curve) if p.tokens == int(tokens)]
    if not at:
        raise UserError(
            f"--ship-point {int(tokens)} is not on {t.name}'s curve ({', '.join(str(p.tokens) for p in curve)})."
        )
    i = at[0]
    _, run = train_point(ctx, t, int(tokens), curve[i - 1].val_bpb if i else None, seed)
    converged = converged_at(curve, meta["threshold"]) == int(tokens)
    name = f"{t.name}-{int(tokens) >> 20}m"
    retrain = retrain_command(ctx.profile.name, t.name, curve[0].tokens, len(curve) - 1, int(tokens))
    return ship(ctx.profile, t, run, curve, converged, root=root, retrain=retrain, name=name)


def converged_at(curve: list[CurvePoint], threshold: float = THRESHOLD) -> int | None:
    """The curve's converged budget: the tokens before its first doubling that gained less than
    ``threshold`` (the run :func:`chosen` ships); None while every doubling still paid."""
    for before, point in zip(curve, curve[1:], strict=False):
        if point.gain is not None and point.gain < threshold:
            return before.tokens
    return None


def chosen(runs: list[Run], converged: bool, tokens: int | None = None) -> Run:
    """The run to ship: the one of ``tokens`` when given (a budget chosen for cost, e.g. a profile's
    time limit; it must be on the curve); else, converged, the budget before the first doubling under
    the threshold; not converged, the largest budget trained."""
    if tokens is not None:
        found = [r for r in runs if r.tokens == int(tokens)]
        if not found:
            raise UserError(
                f"--ship-tokens {int(tokens)} is not on the curve ({', '.join(str(r.tokens) for r in runs)})."
            )
        return found[0]
    return runs[-2] if converged else runs[-1]


def curve_csv(curve: list[CurvePoint]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CurvePoint.__dataclass_fields__))
    writer.writeheader()
    for p in curve:
        writer.writerow(asdict(p))
    return buf.getvalue()


def next_version(root: Path, name: str) -> Path:
    """``root/<name>-v<N>`` for the first N not taken: a shipped teacher is never overwritten."""
    n = 1
    while (root / f"{name}-v{n}").exists():
        n += 1
    return root / f"{name}-v{n}"


def ship(
    profile: Profile,
    t: Teacher,
    run: Run,
    curve: list[CurvePoint],
    converged: bool,
    root: Path = TEACHERS_DIR,
    retrain: str = "",
    name: str | None = None,
) -> Path:
    """Copy ``run``'s model to a new version directory under ``root/<profile>/`` (named ``name``, default
    the teacher's) with its metadata."""
    dest = next_version(root / profile.name, name or t.name)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for file in MODEL_FILES:
        if (run.model_dir / file).is_file():
            shutil.copy2(run.model_dir / file, tmp / file)
    summary = run.result.summary
    meta = {
        "name": name or t.name,
        "profile": profile.name,
        "shape": dict(t.shape),
        "tokens": run.tokens,
        "val_bpb": bits(run.result.val_loss or float("nan")),
        "threshold": THRESHOLD,
        "converged": converged,
        "sha256": sha256_file(tmp / "model.safetensors"),
        "corpus": summary.get("corpus", {}),
        "train_config": summary.get("config", {}),
        "n_params": summary.get("n_params"),
        "curve": [asdict(p) for p in curve],
        "curve_wall_time_s": sum(p.wall_time_s for p in curve),
        "commit": commit_label(),
        "retrain": retrain or f"python -m harness teachers --profile {profile.name} --teacher {t.name}",
    }
    atomic_write_json(tmp / "teacher.json", meta, indent=1, sort_keys=False)
    atomic_write_text(tmp / "curve.csv", curve_csv(curve))
    tmp.rename(dest)
    return dest
