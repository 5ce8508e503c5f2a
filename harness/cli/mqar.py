"""``python -m harness mqar``: multi-query associative recall (:mod:`analyses.mqar`) — train each
method at each width, print accuracy against decoding state size, and write the rows with ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analyses.mqar import MQARConfig, MQARConfigError, MQARTrainConfig, mqar_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Methods and widths to sweep, the MQAR setting, the training run, and where rows go."""
    parser.add_argument("--methods", default="softmax", help="comma-separated registered methods, or 'all'")
    parser.add_argument("--d-models", default="64", help="comma-separated model widths (sets the state size)")
    parser.add_argument("--vocab-size", type=int, default=MQARConfig.vocab_size)
    parser.add_argument("--num-kv-pairs", type=int, default=MQARConfig.num_kv_pairs)
    parser.add_argument("--seq-len", type=int, default=MQARConfig.seq_len)
    parser.add_argument("--n-layers", type=int, default=MQARTrainConfig.n_layers)
    parser.add_argument("--n-heads", type=int, default=MQARTrainConfig.n_heads)
    parser.add_argument("--steps", type=int, default=MQARTrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=MQARTrainConfig.batch_size)
    parser.add_argument("--lr", default=str(MQARTrainConfig.lr), help="learning rate(s), comma-separated: best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write rows to this .csv (plus a .json twin) or .json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def main(args: argparse.Namespace) -> int:
    """Run the sweep as the flags say; input errors print one ``error:`` line and return 2."""
    from harness.core.mixer import MixerConfigError
    from harness.core.registry import UnknownMethodError, capabilities, list_methods
    from harness.evaluation.errors import EvalInputError
    from harness.evaluation.results import run_metadata, write_results

    try:
        if args.out is not None and args.out.exists() and not args.overwrite:
            raise EvalInputError(f"{args.out} exists; choose another --out or pass --overwrite.")
        methods = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            capabilities(m)  # unknown names fail here, before any training
        d_models = [int(d) for d in args.d_models.split(",") if d.strip()]
        data = MQARConfig(vocab_size=args.vocab_size, num_kv_pairs=args.num_kv_pairs, seq_len=args.seq_len)
        train = MQARTrainConfig(
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        lrs = [float(x) for x in str(args.lr).split(",") if x.strip()]
        rows = mqar_sweep(methods, d_models, data, train, lrs=lrs, device=args.device)
    except (EvalInputError, MQARConfigError, MixerConfigError, UnknownMethodError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = run_metadata()
    rows = [{**r, **meta} for r in rows]
    import pandas as pd

    cols = ["method", "d_model", "state_size", "value", "stderr", "n", "final_loss", "train_seconds"]
    print(pd.DataFrame(rows)[cols].rename(columns={"value": "accuracy"}).to_string(index=False))
    if args.out is not None:
        for p in write_results(rows, args.out, extra={"metadata": meta}, overwrite=args.overwrite):
            print(f"wrote {p}")
    return 0
