"""lm-eval evaluation: the offline tasks score a tiny model end to end, their data is deterministic
and right, results are tidy rows, and bad input gets one clear message."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from harness import MixerLMConfig, MixerLMForCausalLM
from harness.cli import main as cli_main
from harness.conversion.factory import load_model
from harness.conversion.hf_checkpoint import CheckpointError
from harness.data import load_corpus, load_tokenizer
from harness.evaluation.errors import EvalInputError
from harness.evaluation.evaluate import evaluate, make_lm
from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec, build_offline_data, read_jsonl, read_manifest
from harness.evaluation.models import default_tokenizer
from harness.evaluation.results import tidy_rows, write_results
from harness.evaluation.tasks import TASK_SETS, expand_tasks, load_tasks, task_manager

#: small enough that context + candidate line fit the tiny model's 256 positions
SPEC = OfflineDataSpec(ppl_max_chars=200, next_line_examples=24, context_chars=120, max_line_chars=80)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A stand-in code corpus: 60 synthetic modules, three of which hash into the test split."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "pkg").mkdir()
    for i in range(60):
        lines = [f'"""Module {i}: helpers."""', "", f"import math as m{i}", ""]
        for j in range(12):
            lines += [
                f"def f_{i}_{j}(x, y={j}):",
                f"    z = x * {i} + y - {j}",
                f"    return m{i}.sqrt(z ** 2 + {j})",
                "",
            ]
        (root / "pkg" / f"mod_{i:03d}.py").write_text("\n".join(lines))
    c = load_corpus(root)
    assert len(list(c.documents("test"))) >= 2
    return c


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = MixerLMConfig(
        vocab_size=258, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256
    )
    return MixerLMForCausalLM(config).eval()


# -- data ---------------------------------------------------------------------------------------------
def test_offline_data_is_deterministic_and_keyed_by_corpus(corpus, tmp_path):
    a = build_offline_data(corpus, SPEC, cache_root=tmp_path / "a")
    b = build_offline_data(corpus, SPEC, cache_root=tmp_path / "b")
    assert a.name == b.name and corpus.meta["hash"][:16] in a.name
    for file in ("heldout_ppl.jsonl", "next_line.jsonl"):
        assert (a / file).read_bytes() == (b / file).read_bytes()
    manifest = read_manifest(a)
    assert manifest["corpus"]["hash"] == corpus.meta["hash"]
    assert manifest["rows"]["heldout_ppl"] >= 2 and manifest["rows"]["next_line"] == 24
    # reused when valid; regenerated when a file was damaged
    assert build_offline_data(corpus, SPEC, cache_root=tmp_path / "a") == a
    (a / "next_line.jsonl").write_text("damaged\n")
    build_offline_data(corpus, SPEC, cache_root=tmp_path / "a")
    assert (a / "next_line.jsonl").read_bytes() == (b / "next_line.jsonl").read_bytes()
    # another seed: another folder, other examples
    other = build_offline_data(corpus, OfflineDataSpec(**{**SPEC.__dict__, "seed": 1}), cache_root=tmp_path / "a")
    assert other != a and (other / "next_line.jsonl").read_bytes() != (a / "next_line.jsonl").read_bytes()


def test_next_line_examples_are_right(corpus, tmp_path):
    docs = {d.name: d.text for d in corpus.documents("test")}
    rows = read_jsonl(build_offline_data(corpus, SPEC, cache_root=tmp_path) / "next_line.jsonl")
    for row in rows:
        lines = docs[row["source"]].split("\n")
        true_line = lines[row["line"] - 1]
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert row["choices"][row["label"]] == true_line + "\n"
        # the context is exactly the text before the true line
        assert ("\n".join(lines[: row["line"] - 1]) + "\n").endswith(row["context"])
        indent = true_line[: len(true_line) - len(true_line.lstrip())]
        for k, choice in enumerate(row["choices"]):
            if k == row["label"]:
                continue
            assert choice.startswith(indent) and choice.strip() != true_line.strip()
            others = {line.strip() for n, t in docs.items() if n != row["source"] for line in t.split("\n")}
            assert choice.strip() in others
    assert len({r["label"] for r in rows}) > 1  # the answer is not always in one place


def test_heldout_rows_are_the_test_split(corpus, tmp_path):
    rows = read_jsonl(build_offline_data(corpus, SPEC, cache_root=tmp_path) / "heldout_ppl.jsonl")
    docs = list(corpus.documents("test"))
    assert [r["source"] for r in rows] == [d.name for d in docs]
    assert all(r["text"] == d.text[:200] for r, d in zip(rows, docs))


# -- scoring through lm-eval --------------------------------------------------------------------------
def test_offline_tasks_score_a_tiny_model(corpus, tiny_model, tmp_path):
    result = evaluate(tiny_model, load_tokenizer("byte"), "offline", corpus=corpus, data_spec=SPEC, cache_root=tmp_path)
    bpb = result.value("heldout_ppl", "bits_per_byte")
    assert math.isfinite(bpb) and 0 < bpb < 16
    acc = result.value("next_line", "acc")
    assert 0.0 <= acc <= 1.0
    by_metric = {(r["task"], r["metric"]): r for r in result.rows}
    assert by_metric[("next_line", "acc")]["n"] == 24 and by_metric[("heldout_ppl", "bits_per_byte")]["n"] >= 2
    assert 0 < by_metric[("next_line", "acc")]["stderr"] < 1
    row = result.rows[0]
    assert row["method"] == "softmax" and row["corpus_hash"] == corpus.meta["hash"]
    for key in ("git_commit", "torch", "transformers", "lm_eval", "date", "corpus_files", "corpus_bytes"):
        assert key in row

    # bits per byte is -sum log p(byte) / (bytes ln 2), every byte predicted once from <|endoftext|> on
    docs = read_jsonl(build_offline_data(corpus, SPEC, cache_root=tmp_path) / "heldout_ppl.jsonl")
    total_ll, total_bytes = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([[256, *doc["text"].encode("utf-8")]])
            logp = torch.log_softmax(tiny_model(ids).logits[0, :-1].double(), -1)
            total_ll += logp.gather(1, ids[0, 1:, None]).sum().item()
            total_bytes += len(doc["text"].encode("utf-8"))
    assert bpb == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-4)


def test_cli_eval_writes_tidy_rows_and_never_overwrites(corpus, tiny_model, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    load_tokenizer("byte").save_pretrained(model_dir)
    out = tmp_path / "res" / "tiny.csv"
    argv = ["eval", str(model_dir), "--tasks", "next_line", "--corpus", corpus.spec, "--limit", "4"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out)]
    assert cli_main(argv) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:7] == ["model", "method", "task", "metric", "value", "stderr", "n"]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert {r["metric"] for r in payload["rows"]} == {"acc", "acc_norm"} and payload["rows"][0]["n"] == 4
    assert payload["metadata"]["corpus_hash"] == corpus.meta["hash"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


# -- bad input ----------------------------------------------------------------------------------------
def test_unknown_task_name_lists_close_matches(capsys):
    assert cli_main(["eval", "some-model", "--tasks", "arc_eassy"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'arc_eassy'" in err and "arc_easy" in err and "lm-eval ls tasks" in err
    assert "Traceback" not in err


def test_paper_task_sets_resolve_without_indexing_all_of_lm_eval():
    for name in ("table1", "table3"):
        tasks = expand_tasks(name)
        assert set(tasks) <= set(task_manager(tasks).task_index)
    assert "wsc" in TASK_SETS["table1"] and "social_iqa" in expand_tasks("siqa,nq") and "nq_open" in expand_tasks("nq")


def test_hub_task_offline_names_the_fix(tmp_path):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # tests/conftest.py
    (tmp_path / "hub_task.yaml").write_text(
        "task: dijiang_suite_hub_probe\ndataset_path: dijiang-suite-tests/no-such-dataset\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\ndoc_to_choice: c\ndoc_to_target: 0\n"
    )
    manager = task_manager(["dijiang_suite_hub_probe"], include_path=[tmp_path])
    with pytest.raises(EvalInputError) as info:
        load_tasks(["dijiang_suite_hub_probe"], manager)
    msg = str(info.value)
    assert "dijiang-suite-tests/no-such-dataset" in msg and "HF_DATASETS_OFFLINE" in msg and "--tasks offline" in msg


def test_vocab_mismatch_and_missing_model_are_clear(tmp_path):
    small = MixerLMForCausalLM(
        MixerLMConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(EvalInputError, match="vocab mismatch.*258"):
        make_lm(small, load_tokenizer("byte"))
    # no tokenizer beside a model with a word-level vocabulary: an error, not silently bytes
    with pytest.raises(EvalInputError, match="--tokenizer"):
        default_tokenizer(MixerLMForCausalLM(MixerLMConfig(vocab_size=50304, hidden_size=8, num_attention_heads=2)))
    # the suite's one loader (harness.conversion.factory) says what is wrong with a checkpoint
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "no-such-checkpoint")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


# -- tidy rows ----------------------------------------------------------------------------------------
def test_tidy_rows_and_atomic_results(tmp_path):
    raw = {
        "results": {
            "mmlu": {"alias": "mmlu", "acc,none": 0.3, "acc_stderr,none": 0.01},
            "mmlu_a": {"alias": " - a", "acc,none": 0.25, "acc_stderr,none": 0.02},
            "mmlu_b": {"alias": " - b", "acc,none": 0.35, "acc_stderr,none": 0.02},
            "nq_open": {"exact_match,remove_whitespace": 0.1, "exact_match_stderr,remove_whitespace": "N/A"},
        },
        "group_subtasks": {"mmlu": ["mmlu_a", "mmlu_b"]},
        "n-samples": {
            "mmlu_a": {"original": 10, "effective": 10},
            "mmlu_b": {"original": 30, "effective": 30},
            "nq_open": {"original": 50, "effective": 5},
        },
    }
    rows = {(r["task"], r["metric"]): r for r in tidy_rows(raw, "m", "dijiang")}
    assert rows[("mmlu", "acc")]["n"] == 40 and rows[("mmlu_a", "acc")]["stderr"] == 0.02
    nq = rows[("nq_open", "exact_match,remove_whitespace")]
    assert nq["stderr"] is None and nq["n"] == 5 and nq["value"] == 0.1
    path = tmp_path / "r.csv"
    write_results(list(rows.values()), path)
    assert path.read_text().startswith("model,method,task,metric,value,stderr,n")
    with pytest.raises(EvalInputError, match="--overwrite"):
        write_results(list(rows.values()), path)
    write_results(list(rows.values()), path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- scoring on known answers -------------------------------------------------------------------------
def rigged_model(logits: torch.Tensor) -> MixerLMForCausalLM:
    """A model whose next-byte distribution is ``softmax(logits)`` whatever the input: its final norm
    outputs a constant unit vector and its head maps that vector to ``logits``."""
    config = MixerLMConfig(
        vocab_size=258, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=1024
    )
    model = MixerLMForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.bias.zero_()
        model.model.norm.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = logits
    return model


def prefer(byte: str) -> MixerLMForCausalLM:
    logits = torch.zeros(258)
    logits[ord(byte)] = 12.0
    return rigged_model(logits)


def test_next_line_is_scored_right_on_known_answers(tmp_path):
    """A fixture whose right line is all ``Q`` and whose wrong lines are all ``z`` (same length): a model
    preferring ``Q`` is always right, one preferring ``z`` never; the per-item results say so too."""
    from harness.evaluation.items import decode_items
    from harness.evaluation.tasks import PreparedTasks

    rows = []
    for i in range(12):
        label = i % 4
        choices = ["    " + ("Q" if k == label else "z") * (10 + i) + "\n" for k in range(4)]
        context = f"def f{i}():\n"
        rows.append({"id": i, "source": f"f{i}.py", "line": 3, "context": context, "choices": choices, "label": label})
    (tmp_path / "next_line.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = task_manager(["next_line"], tmp_path)
    prepared = PreparedTasks(["next_line"], manager, load_tasks(["next_line"], manager), tmp_path)
    tok = load_tokenizer("byte")
    for byte, expected in (("Q", 1.0), ("z", 0.0)):
        result = evaluate(prefer(byte), tok, prepared, max_length=128)
        row = next(r for r in result.rows if r["task"] == "next_line" and r["metric"] == "acc")
        assert row["value"] == expected and row["n"] == 12
        items = decode_items(row["items"])
        assert items is not None and items.values.tolist() == [int(expected)] * 12


MULTIPLE_CHOICE = [
    "piqa_local",
    "winogrande_local",
    "arc_easy_local",
    "arc_challenge_local",
    "hellaswag_local",
    "boolq_local",
    "social_iqa_local",
    "copa_local",
    "openbookqa_local",
    "sciq_local",
    "mmlu_local",
]


def row_split(rows: dict, task: str) -> str:
    return rows[(task, "acc")]["split"]


def test_every_multiple_choice_task_scores_a_rigged_model_as_expected():
    """A model with the same probability for every byte prefers the answer with the fewest bytes (the
    first of equals): on every bundled multiple-choice task its accuracy, and each item's result in
    document order, must be what that rule and the documents' labels give."""
    from harness.evaluation.items import decode_items
    from harness.evaluation.lm_eval_tasks.bundled import load_bundled, official_name

    model = rigged_model(torch.zeros(258))
    result = evaluate(model, load_tokenizer("byte"), MULTIPLE_CHOICE, docs=24, max_length=512, batch_size=32)
    rows = {(r["task"], r["metric"]): r for r in result.rows}
    for task in MULTIPLE_CHOICE:
        samples = result.raw["samples"]
        leaves = sorted(t for t in samples if t == task or (task == "mmlu_local" and t.startswith("mmlu")))
        expected = []
        for leaf in leaves:
            for sample in sorted(result.raw["samples"][leaf], key=lambda s: s["doc_id"]):
                # lm-eval moves a context's trailing whitespace onto the continuation before encoding
                lengths = [len(c) - len(c.rstrip()) + len(a.encode()) for c, a in sample["arguments"]]
                # the right option's index (WinoGrande's and COPA's targets are texts)
                gold = sample["target"]
                if task == "winogrande_local":
                    gold = int(sample["doc"]["answer"]) - 1
                elif task == "copa_local":
                    gold = sample["doc"]["label"]
                expected.append(int(lengths.index(min(lengths)) == gold))
        if task != "mmlu_local":  # each logged document is the split's document at its recorded index
            split = load_bundled(official_name(task))[row_split(rows, task)]
            for sample in samples[task][:5]:
                raw = split[sample["doc_id"]]
                assert {k: sample["doc"][k] for k in raw} == raw, task
        row = rows[(task, "acc")]
        assert row["n"] == len(expected) >= 24 and row["status"] == "ok", task
        assert row["value"] == pytest.approx(sum(expected) / len(expected)), task
        assert decode_items(row["items"]).values.tolist() == expected, task
        assert 0 < row["stderr"] < 0.2, task


# -- the paper's task sets offline ----------------------------------------------------------------------
def test_cli_table1_runs_offline_with_stderr_and_says_what_is_not_available(tiny_model, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    load_tokenizer("byte").save_pretrained(model_dir)
    out = tmp_path / "t1.csv"
    argv = ["eval", str(model_dir), "--tasks", "table1", "--docs", "6", "--device", "cpu", "--out", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    rows = {(r["task"], r["metric"]): r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    for task in ("piqa_local", "winogrande_local", "arc_easy_local", "arc_challenge_local"):
        row = rows[(task, "acc")]
        assert row["n"] == 6 and row["status"] == "ok" and row["split"] == "validation"
        p = row["value"]  # lm-eval's acc_stderr: the sample standard deviation over the items / sqrt(n)
        assert row["stderr"] == pytest.approx(math.sqrt(p * (1 - p) * 6 / 5 / 6))
        assert row["docs"] > 6 and row["examined"] == 6 + row["skipped"]
    for task in ("wsc", "logiqa"):
        row = rows[(task, "acc")]
        assert row["status"] == "not available offline" and row["value"] is None and row["n"] == 0
    assert "not available offline" in printed and "arc_easy: scored on the bundled validation split" in printed


def test_subsample_is_fixed_and_skips_what_does_not_fit(tiny_model):
    """The same documents for two different models; every chosen document's answers fit half the
    window, and the ones that do not are counted."""
    from harness.evaluation.selection import select_documents
    from harness.evaluation.tasks import prepare_tasks

    tok = load_tokenizer("byte")
    prepared = prepare_tasks("piqa_local")
    (task,) = prepared.tasks
    lm_a = make_lm(tiny_model, tok, max_length=64)
    lm_b = make_lm(prefer("Q"), tok, max_length=64)
    a = select_documents(lm_a, task, docs=10, seed=3)
    b = select_documents(lm_b, task, docs=10, seed=3)
    assert a == b and len(a.indices) == 10 and a.skipped > 0 and a.examined == 10 + a.skipped
    assert select_documents(lm_a, task, docs=10, seed=4).indices != a.indices
    docs = task.eval_docs
    for i in a.indices:
        for choice in (docs[i]["sol1"], docs[i]["sol2"]):
            assert len((" " + choice).encode()) <= 32


def test_request_lengths_are_lm_evals(tiny_model):
    """The byte tokenizer's shortcut (UTF-8 bytes) counts what lm-eval's own encoding gives."""
    from harness.evaluation.selection import _pair_lengths

    lm = make_lm(tiny_model, load_tokenizer("byte"), max_length=64)
    for context, continuation in [("Question: où?\nAnswer:", " ça"), ("a b  \n", "c"), ("x", " y \n"), ("", "abc")]:
        if context:
            ctx, cont = lm._encode_pair(context, continuation)
        else:
            ctx, cont = [lm.prefix_token_id], lm.tok_encode(continuation, add_special_tokens=False)
        assert _pair_lengths(lm, context, continuation) == (len(ctx), len(cont))


def test_hub_probe_is_fast_and_false_without_a_hub(monkeypatch):
    """Without a reachable hub, hub tasks are marked unavailable after one quick probe, not after the
    hub client's retries for every task (tens of seconds each)."""
    import time

    from harness.evaluation.tasks import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    hub_reachable.cache_clear()
    try:
        start = time.monotonic()
        assert hub_reachable(timeout_s=2.0) is False
        assert time.monotonic() - start < 10
    finally:
        hub_reachable.cache_clear()
