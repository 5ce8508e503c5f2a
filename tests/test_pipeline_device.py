"""The pipeline scores and times models on its profile's device (``harness/pipeline/stages.py``:
:func:`profile_device`, ``Context.device``), and a profile asking for CUDA on a machine without it
is one clear error line, never a silent fall-back to the CPU.

No GPU is needed: CUDA's presence is monkeypatched where a test needs it, and the loaders are
replaced by recorders of the device they are asked for. Where a real tensor has to land on "another
device", it is the ``meta`` device (a device besides the CPU that every build of torch has)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from harness import MixerLMConfig, MixerLMForCausalLM
from harness.pipeline import stages
from harness.pipeline.spec import load_profile
from harness.util.errors import UserError
from tests.test_cli import one_error_line


def context(tmp_path, device: str, profile: str = "smoke") -> stages.Context:
    """A context of ``profile`` with its device replaced by ``device``."""
    return stages.Context(dataclasses.replace(load_profile(profile), device=device), results_dir=tmp_path)


def fake_cuda(monkeypatch, count: int = 2, current: int = 1) -> None:
    """CUDA present as far as the pipeline can tell: ``count`` devices, the process on ``current``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def tiny_model() -> MixerLMForCausalLM:
    torch.manual_seed(0)
    cfg = MixerLMConfig(vocab_size=258, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    return MixerLMForCausalLM(cfg).eval()


# -- which device a profile means -------------------------------------------------------------------
def test_a_cpu_profile_runs_on_the_cpu(tmp_path):
    assert context(tmp_path, "cpu").device == torch.device("cpu")
    assert stages.profile_device(load_profile("tiny")) == torch.device("cpu")


def test_cuda_is_this_process_gpu_and_an_index_must_exist(tmp_path, monkeypatch):
    fake_cuda(monkeypatch, count=2, current=1)
    assert context(tmp_path, "cuda").device == torch.device("cuda", 1)  # accelerate sets each rank's current GPU
    assert context(tmp_path, "cuda:0").device == torch.device("cuda", 0)
    with pytest.raises(UserError, match="has 2 CUDA device"):
        context(tmp_path, "cuda:2").device  # noqa: B018
    with pytest.raises(UserError, match="not a device torch knows"):
        context(tmp_path, "gpu").device  # noqa: B018


def test_a_cuda_profile_without_cuda_is_one_line_naming_the_cpu_profiles(monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(UserError) as err:
        stages.profile_device(load_profile("paper"))
    message = str(err.value)
    assert "\n" not in message and "'paper' needs CUDA GPUs" in message and "--profile paper-offline" in message


def test_reproduce_refuses_a_cuda_profile_without_cuda_in_one_line(capsys, monkeypatch):
    no_cuda(monkeypatch)  # also on a GPU machine: the refusal, not the paper's runs
    line = one_error_line(capsys, ["reproduce", "--profile", "paper"])
    assert "needs CUDA GPUs" in line and "paper-offline" in line


# -- evaluation -------------------------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    """Calls of ``load_model`` (its ``device``) and of ``evaluate`` (the model it was given), both
    replaced: nothing is loaded or scored."""
    calls: list[dict] = []
    model = SimpleNamespace(name="the loaded model")

    def load_model(spec, device=None, dtype=None):  # noqa: ANN001, ANN202
        calls.append({"load": str(spec), "device": device})
        return model

    def evaluate(m, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append({"evaluate": m})
        return SimpleNamespace(rows=[{"task": "t", "metric": "acc", "value": 0.5}])

    monkeypatch.setattr("harness.conversion.factory.load_model", load_model)
    monkeypatch.setattr("harness.evaluation.evaluate.evaluate", evaluate)
    return calls


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "cuda:1"), ("cuda:0", "cuda:0")])
def test_evaluate_model_loads_the_model_on_the_profile_device(tmp_path, monkeypatch, recorded, device, expected):
    fake_cuda(monkeypatch, count=2, current=1)
    rows = stages.evaluate_model(context(tmp_path, device), "some/model", "m", "softmax")
    assert rows == [{"task": "t", "metric": "acc", "value": 0.5}]
    assert recorded[0] == {"load": "some/model", "device": expected}
    assert recorded[1]["evaluate"].name == "the loaded model"


def test_evaluate_model_on_a_cuda_profile_without_cuda_fails_before_loading(tmp_path, monkeypatch, recorded):
    no_cuda(monkeypatch)
    with pytest.raises(UserError, match="needs CUDA GPUs"):
        stages.evaluate_model(context(tmp_path, "cuda", "paper"), "some/model", "m", "softmax")
    assert recorded == []


def test_lm_eval_feeds_inputs_on_the_model_device():
    """lm-eval's ``HFLM`` around a model object puts every input on ``model.device``, which must be
    where the parameters are: a model on the meta device gives an ``HFLM`` on the meta device."""
    from harness.data.tokenizer import load_tokenizer
    from harness.evaluation.evaluate import make_lm

    model = tiny_model().to("meta")
    lm = make_lm(model, load_tokenizer("byte"), max_length=64)
    assert lm.device == next(model.parameters()).device == torch.device("meta")


# -- throughput and the analyses --------------------------------------------------------------------
def test_decode_throughput_loads_the_model_on_the_given_device(tmp_path, monkeypatch):
    from harness.pipeline import throughput

    tiny_model().save_pretrained(tmp_path / "model")
    asked: list = []
    real = throughput.load_model

    def load_model(spec, device=None, dtype=None):  # noqa: ANN001, ANN202
        asked.append(device)
        return real(spec, device=device, dtype=dtype)

    monkeypatch.setattr(throughput, "load_model", load_model)
    assert throughput.decode_throughput(tmp_path / "model", 8, new_tokens=2, repeats=1, device="cpu") > 0
    assert throughput.decode_throughput(tmp_path / "model", 8, new_tokens=2, repeats=1) > 0
    assert asked == ["cpu", None]


def test_analyses_move_the_ids_to_the_model_device():
    """Held-out ids are made on the CPU; the attention-map and hybrid-selection analyses run the
    model on its own device (here: meta), the ids moved there."""
    from analyses.attention_maps import layer_inputs
    from analyses.hybrid import _teacher_targets

    model = tiny_model().to("meta")
    seen: list[torch.device] = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args or (kwargs["input_ids"],))[0].device), with_kwargs=True
    )
    ids = torch.randint(0, 258, (1, 8))
    assert layer_inputs(model, ids, 0).device == torch.device("meta")
    assert len(list(_teacher_targets(model, [ids]))) == 1
    assert seen == [torch.device("meta")] * 2
