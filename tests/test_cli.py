"""The command line's contract with users (harness/cli/__init__.py): a mistake a user can make prints one
line, ``error: ...``, naming the fix, and exits with status 2 — never a traceback; a bug still
raises. Every option of ``train`` has a help string."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from harness import cli
from harness.cli import main
from harness.pipeline import spec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit with status 2 and one ``error:`` line on stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def checkpoints(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return {"empty": empty, "bert": bert}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{missing}", "softmax"], "could not be fetched"),
        (["{empty}", "softmax"], "has no config.json"),
        (["{bert}", "softmax"], "unsupported architecture 'bert'"),
        (["{bert}", "cosfomer"], "unknown method 'cosfomer'; registered methods: "),
        (["{bert}", "softmax", "--options", "{bad"], "--options must be a JSON object"),
    ],
)
def test_convert_mistakes_are_one_line(capsys, tmp_path, checkpoints, args, expected):
    paths = {**checkpoints, "missing": tmp_path / "nowhere"}
    argv = ["convert", args[0].format(**paths), args[1], str(tmp_path / "out"), *args[2:]]
    assert expected in one_error_line(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_convert_refuses_an_existing_output(capsys, tmp_path, checkpoints):
    assert "exists; choose a new directory" in one_error_line(
        capsys, ["convert", str(checkpoints["bert"]), "softmax", str(tmp_path)]
    )


def test_reproduce_mistakes_are_one_line(capsys, tmp_path):
    line = one_error_line(capsys, ["reproduce", "--profile", "smoke", "--only", "table9", "--dry-run"])
    assert "unknown experiment 'table9'; defined: " in line and "table2_methods" in line
    assert "invalid choice: 'huge'" in one_error_line(capsys, ["reproduce", "--profile", "huge"])
    line = one_error_line(capsys, ["reproduce", "--profile", "smoke", "--data", str(tmp_path / "nowhere")])
    assert "does not exist" in line
    import torch

    if not torch.cuda.is_available():  # on a GPU machine this would start the paper's runs
        assert "needs CUDA GPUs" in one_error_line(capsys, ["reproduce", "--profile", "paper"])


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        ("table2_methods.yaml", lambda t: t + "\nparams: [oops\n", "is not valid YAML"),
        (
            "table2_methods.yaml",
            lambda t: t.replace("conversion_fraction", "conversion_fractoin"),
            "conversion_fractoin",
        ),
        ("profiles.yaml", lambda t: t.replace("block_size: 64", "block_sise: 64", 1), "unknown ['block_sise']"),
    ],
)
def test_a_bad_experiment_definition_is_one_line(capsys, tmp_path, monkeypatch, file, change, expected):
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    path = tmp_path / "experiments" / file
    path.write_text(change(path.read_text()))
    monkeypatch.setattr(spec, "EXPERIMENTS_DIR", tmp_path / "experiments")
    assert expected in one_error_line(capsys, ["reproduce", "--profile", "smoke", "--dry-run"])


def test_train_config_mistakes_are_one_line(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    assert "is not valid YAML" in one_error_line(capsys, ["train", "--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "typo.yaml").write_text("lrr: 0.1\n")
    assert "unknown training config key(s) ['lrr']" in one_error_line(
        capsys, ["train", "--config", str(tmp_path / "typo.yaml")]
    )
    assert "does not exist" in one_error_line(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert "--tokens needs a number" in one_error_line(capsys, ["train", "--tokens", "lots"])


def test_unknown_command_and_option_are_one_line(capsys):
    assert "invalid choice: 'trian'" in one_error_line(capsys, ["trian"])
    assert "unrecognized arguments: --jsn" in one_error_line(capsys, ["methods", "--jsn"])
    assert "must be a whole number >= 1" in one_error_line(capsys, ["demo", "--tokens", "-3"])


def test_a_bug_is_not_hidden(monkeypatch):
    """Only the listed user-error types become one line; anything else keeps its traceback."""
    import harness.cli.methods

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(harness.cli.methods, "main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["methods"])


def test_user_error_types_resolve():
    """Every listed user-error type exists where the list says (a renamed class would silently
    turn its messages back into tracebacks)."""
    import importlib

    for module, name in cli.USER_ERRORS:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), (module, name)


def test_every_train_option_has_help():
    from harness.cli.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    missing = [a.option_strings for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing
