"""Write the notebooks (one per paper table/figure, plus a conversion walkthrough) with nbformat.

They hold no results of their own: each reads ``results/<profile>/<experiment>/`` through
:mod:`harness.report.notebook` and redraws the figures with :mod:`harness.report.figures`.
``python notebooks/build.py`` writes them; ``python notebooks/build.py --execute`` also runs them
headless (nbclient) so they are committed with the outputs of the current results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SETUP = """import sys, pathlib
sys.path.insert(0, str(pathlib.Path.cwd().parent))  # the repository root
import pandas as pd
from IPython.display import Image, Markdown, display
from harness.report.notebook import load, profile
pd.set_option("display.precision", 4)
print("profile:", profile())"""


def header(name: str, title: str) -> list:
    return [
        new_markdown_cell(
            f"# {title}\n\nReads `results/<profile>/{name}/`, written by "
            f"`./reproduce.sh --only {name}` (set `SUITE_PROFILE` to pick the profile)."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            f"r = load(\"{name}\")\ndisplay(Markdown(f\"**{{r.meta['paper_ref']}}** — {{r.meta['description']}}\"))"
        ),
    ]


def table_cells(paper_table: str | None) -> list:
    cells = [new_code_cell('r.tables.get("table", r.tables["results"])')]
    if paper_table:
        cells += [new_markdown_cell("The paper's numbers:"), new_code_cell(f'r.paper("{paper_table}")')]
    return cells


NOTEBOOKS: dict[str, tuple[str, list]] = {
    "table1_scale": (
        "Table 1 — DiJiang across model sizes",
        [
            *table_cells("table1_scale"),
        ],
    ),
    "table2_methods": (
        "Table 2 — every method converted from one teacher",
        [
            *table_cells("table2_methods"),
            new_markdown_cell("Per seed:"),
            new_code_cell('r.tables["per_seed"]'),
        ],
    ),
    "table3_7b": (
        "Table 3 — a LLaMA-layout teacher converted to DiJiang",
        [
            *table_cells("table3_7b"),
        ],
    ),
    "fig2_curves": (
        "Figure 2 — conversion training curves",
        [
            new_code_cell(
                "from harness.report.figures import plot_curves\n"
                "paths = plot_curves(r.tables['results'], r.folder / 'notebook_fig2')\nImage(paths[0])"
            ),
        ],
    ),
    "fig3_attention_maps": (
        "Figure 3 — implied attention maps",
        [
            new_code_cell('r.tables["results"]'),
            new_code_cell("Image(r.folder / 'fig3_attention_maps.png')"),
        ],
    ),
    "fig4_speed_memory": (
        "Figure 4 — throughput and memory against sequence length",
        [
            *table_cells(None),
            new_code_cell(
                "for f in r.meta['figures']:\n    if f.endswith('.png'):\n        display(Image(r.folder / f))"
            ),
        ],
    ),
    "kernel_ablation": (
        "Kernel approximation: Monte Carlo vs quasi-Monte Carlo vs weighted DCT",
        [
            *table_cells(None),
            new_code_cell(
                "from harness.report.figures import plot_kernel_ablation\n"
                "paths = plot_kernel_ablation(r.tables['results'], r.folder / 'notebook_kernel')\nImage(paths[0])"
            ),
        ],
    ),
    "recovery_curve": (
        "Held-out bits per byte and accuracy against conversion budget",
        [
            *table_cells(None),
            new_markdown_cell(
                "Held-out bits per byte (lower is better; the accuracies below sit at chance at small scale):"
            ),
            new_code_cell(
                "from harness.report.figures import plot_recovery\n"
                "paths = plot_recovery(r.tables['results'], r.folder / 'notebook_recovery_bpb', metric='bits_per_byte')\n"
                "Image(paths[0])"
            ),
            new_code_cell(
                "paths = plot_recovery(r.tables['results'], r.folder / 'notebook_recovery')\nImage(paths[0])"
            ),
        ],
    ),
    "mqar": (
        "Multi-query associative recall against state size",
        [
            *table_cells(None),
            new_code_cell(
                "from harness.report.figures import plot_mqar\n"
                "paths = plot_mqar(r.tables['results'], r.folder / 'notebook_mqar')\nImage(paths[0])"
            ),
        ],
    ),
    "recipes_controls": (
        "Conversion recipes against their controls (from scratch, no-op, step 0)",
        [
            *table_cells(None),
            new_markdown_cell("Recovery = (scratch - converted) / (scratch - teacher), held-out bits per byte:"),
            new_code_cell(
                "from harness.report.figures import plot_recipe_recovery\n"
                "paths = plot_recipe_recovery(r.tables['results'], r.folder / 'notebook_recipes')\nImage(paths[0])"
            ),
            new_markdown_cell(
                "The learning-rate sweep behind each row: validation-split bits per byte on the first seed; the "
                "rate with the lowest one was used for every seed (columns `lr`, `scratch_lr` above):"
            ),
            new_code_cell(
                "sweep = r.tables.get('lr_sweep')\n"
                "sweep.pivot_table(index=['fraction', 'method', 'recipe'], columns='lr', values='val_bpb') "
                "if sweep is not None else 'no sweep in this run'"
            ),
        ],
    ),
    "hybrid_pareto": (
        "Hybrid conversions: bits per byte against decode speed",
        [
            *table_cells(None),
            new_code_cell(
                "from harness.report.figures import plot_pareto\n"
                "speeds = [c for c in r.tables['table'].columns if c.startswith('decode_tokens_per_s_')]\n"
                "front = speeds[len(speeds) // 2]  # the middle context\n"
                "paths = plot_pareto(r.tables['table'], r.folder / 'notebook_pareto', x=front)\nImage(paths[0])"
            ),
        ],
    ),
}

WALKTHROUGH = [
    new_markdown_cell(
        "# Converting a Transformer to DiJiang, step by step\n\n"
        "A tiny GPT-NeoX checkpoint is created locally (random weights: no download), converted to the "
        "`softmax` mixer (which must reproduce its logits) and to `dijiang`, fine-tuned for a few steps on "
        "the embedded corpus, and used to generate — the paper's Algorithm 1 at toy scale."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "import tempfile, torch\nfrom transformers import GPTNeoXConfig, GPTNeoXForCausalLM\n"
        "from harness.conversion.hf_checkpoint import convert_checkpoint\n"
        "torch.manual_seed(0)\nckpt = pathlib.Path(tempfile.mkdtemp()) / 'tiny-neox'\n"
        "teacher = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=258, hidden_size=64, num_hidden_layers=2,\n"
        "    num_attention_heads=4, intermediate_size=256, max_position_embeddings=512)).eval()\n"
        "teacher.save_pretrained(ckpt)\nids = torch.tensor([list(b'def main():\\n    return 0')])\n"
        "same = convert_checkpoint(ckpt, 'softmax')\n"
        "print('softmax conversion, max |logit diff|:', (same(ids).logits - teacher(ids).logits).abs().max().item())"
    ),
    new_code_cell(
        "model = convert_checkpoint(ckpt, 'dijiang')\nmixer = model.model.layers[0].mixer\n"
        "print(type(mixer).__name__, 'forms:', mixer.forms, '| state numbers per sequence:', mixer.state_size(2048))\n"
        "print('frozen:', [n for n, p in model.named_parameters() if not p.requires_grad])\n"
        "print('buffers:', [n for n, _ in model.named_buffers()][:4])"
    ),
    new_code_cell(
        "from harness.training.config import TrainConfig\nfrom harness.training.loop import train\n"
        "cfg = TrainConfig(model=str(ckpt), mixer='dijiang', tokenizer='byte', block_size=64, batch_size=8,\n"
        "                  tokens=8 * 64 * 12, lr=1e-3, out_dir=tempfile.mkdtemp() + '/run', progress=False)\n"
        "result = train(cfg)\n"
        "print('final loss', round(result.final_loss, 3), '| tokens', result.tokens)"
    ),
    new_code_cell(
        "from harness.conversion.factory import load_model\nfrom harness.data.tokenizer import load_tokenizer\n"
        "tuned, tok = load_model(result.model_dir), load_tokenizer('byte')\n"
        "out = tuned.generate(tok('def ', return_tensors='pt')['input_ids'], max_new_tokens=24, do_sample=False)\n"
        "print(repr(tok.decode(out[0])))"
    ),
]


def build() -> list[Path]:
    paths = []
    for name, (title, cells) in NOTEBOOKS.items():
        nb = new_notebook(cells=header(name, title) + cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    nb = new_notebook(cells=WALKTHROUGH)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / "conversion_walkthrough.ipynb"
    nbformat.write(nb, path)
    paths.append(path)
    return paths


def execute(path: Path, timeout: int = 600) -> None:
    """Run a notebook top to bottom headless and store its outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="also run each notebook and store its outputs")
    args = parser.parse_args(argv)
    for path in build():
        if args.execute:
            execute(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
