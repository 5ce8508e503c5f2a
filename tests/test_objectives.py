"""Training objectives of the conversion recipes (harness/training/objectives.py)."""

from __future__ import annotations

import pytest
import torch

from harness import MixerLMConfig, MixerLMForCausalLM
from harness.conversion.mixer_swap import convert_model
from harness.training.objectives import ObjectiveError, make_objective, new_parameter_names


def teacher() -> MixerLMForCausalLM:
    torch.manual_seed(0)
    cfg = MixerLMConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64
    )
    return MixerLMForCausalLM(cfg).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(seed))


def train_transfer(obj, student: MixerLMForCausalLM, steps: int = 25) -> tuple[float, float]:
    """``steps`` AdamW steps of ``obj`` on the student's trainable parameters: its loss on a fixed batch
    before and after."""
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    with torch.no_grad():
        before = obj.loss(student, ids()).item()
    for step in range(steps):
        loss = obj.loss(student, ids(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return before, obj.loss(student, ids()).item()


@pytest.mark.parametrize("method", ["dijiang", "retnet"])
def test_transfer_trains_only_new_mixer_parameters_and_lowers_layer_mse(method):
    t = teacher()
    s = convert_model(t, method)
    before = {n: p.detach().clone() for n, p in s.named_parameters()}
    obj = make_objective("transfer", s, t)
    trainable = {n for n, p in s.named_parameters() if p.requires_grad}
    assert trainable == set(new_parameter_names(s, t)) and trainable
    assert all(".mixer." in n and not any(k in n for k in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in trainable)
    mse0, mse1 = train_transfer(obj, s)
    assert mse1 < 0.5 * mse0
    changed = {n for n, p in s.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert all(not p.requires_grad for p in t.parameters())


def test_transfer_of_a_window_hybrid_trains_only_its_linear_part_and_window_factor():
    """LoLCATs' recipe on the window + linear hybrid (hybrid_window_controls): the first stage trains the
    wrapped linear method's own parameters and the window factor, never the copied projections; a layer
    kept as softmax or as a sliding window has nothing for it to train."""
    t = teacher()
    window = {0: {"mixer": "window-linear", "options": {"window": 4, "linear": "dijiang"}}}
    s = convert_model(t, "dijiang", layer_mixers={**window, 1: {"mixer": "sliding-window", "options": {"window": 4}}})
    obj = make_objective("transfer", s, t)
    trainable = {n for n, p in s.named_parameters() if p.requires_grad}
    assert trainable == set(new_parameter_names(s, t))
    assert trainable and all(n.startswith("model.layers.0.mixer.") for n in trainable)
    assert "model.layers.0.mixer.log_factor" in trainable and not any(".proj." in n for n in trainable)
    mse0, mse1 = train_transfer(obj, s)
    assert mse1 < mse0
    only_windows = convert_model(t, "sliding-window", {"window": 4})
    with pytest.raises(ObjectiveError, match="has none"):
        make_objective("transfer", only_windows, t)


def test_transfer_target_is_the_teacher_attention_output():
    """A softmax student converted from a softmax teacher reproduces each layer exactly: MSE 0."""
    t = teacher()
    obj = make_objective("transfer", convert_model(t, "dijiang"), t)
    student = convert_model(t, "softmax")
    with torch.no_grad():
        assert obj.loss(student, ids()).item() < 1e-12
        assert obj.loss(convert_model(t, "dijiang"), ids()).item() > 1e-8


def test_transfer_refuses_a_method_without_new_parameters():
    t = teacher()
    with pytest.raises(ObjectiveError, match="has none"):
        make_objective("transfer", convert_model(t, "performer"), t)


def test_distill_of_an_exact_copy_is_the_scaled_lm_loss_and_pulls_toward_the_teacher():
    t = teacher()
    copy = convert_model(t, "softmax")
    x = ids()
    obj = make_objective("distill", copy, t, {"alpha": 0.3, "temperature": 2.0})
    with torch.no_grad():
        assert obj.loss(copy, x).item() == pytest.approx(0.7 * copy(input_ids=x, labels=x).loss.item(), rel=1e-5)
    student = convert_model(t, "dijiang")
    pure = make_objective("distill", student, t, {"alpha": 1.0, "temperature": 1.0})
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    with torch.no_grad():
        kl0 = pure.loss(student, x).item()
    for step in range(20):
        loss = pure.loss(student, ids(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert pure.loss(student, x).item() < kl0


def test_bad_objective_inputs_are_named():
    t = teacher()
    with pytest.raises(ObjectiveError, match="unknown objective"):
        make_objective("kd", t, t)
    with pytest.raises(ObjectiveError, match="needs a teacher"):
        make_objective("distill", t, None)
    with pytest.raises(ObjectiveError, match="alpha"):
        make_objective("distill", t, t, {"alpha": 2.0})


@pytest.mark.parametrize("recipe", ["paper", "distill", "transfer"])
def test_recipes_spend_the_compute_of_the_paper_budget(recipe):
    from harness.training.recipes import objective_cost, recipe_stages

    budget, rho = 1_000_000, 0.3
    stages = recipe_stages(recipe, budget, rho)
    spent = sum(s.tokens * objective_cost(s.objective, rho) for s in stages)
    assert spent == pytest.approx(budget * objective_cost("lm", rho), rel=1e-5)
    assert [s.objective for s in stages][-1] == {"paper": "lm", "distill": "distill", "transfer": "lm"}[recipe]
    if recipe == "distill":  # the teacher's forward pass costs a quarter of the student's tokens
        assert stages[0].tokens == 750_000


def test_mixer_share_counts_only_mixer_parameters():
    from harness.training.recipes import mixer_share

    t = teacher()
    mixer = sum(p.numel() for layer in t.model.layers for p in layer.mixer.parameters())
    assert mixer_share(t) == pytest.approx(mixer / sum(p.numel() for p in t.parameters()))


# -- precision: every loss in float32 from the logits ---------------------------------------------
def hand_lm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``logits`` upcast by hand (the reference)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def hand_distill_loss(
    s_logits: torch.Tensor, t_logits: torch.Tensor, x: torch.Tensor, alpha: float, T: float
) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` from logits upcast by hand."""
    s_logp = torch.log_softmax(s_logits.float() / T, -1)
    t_logp = torch.log_softmax(t_logits.float() / T, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    return (1 - alpha) * hand_lm_loss(s_logits, x) + alpha * T * T * kl


def test_lm_and_distill_losses_are_float32_under_bf16_autocast():
    """Under CPU bf16 autocast (what accelerate's ``mixed_precision: bf16`` wraps the forward in) the
    logits are bf16; the objectives' losses are float32 and equal the losses of those logits upcast."""
    t = teacher()
    student = convert_model(t, "dijiang")
    x = ids()
    lm = make_objective("lm", student, None)
    distill = make_objective("distill", student, t, {"alpha": 0.3, "temperature": 2.0})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        s_logits, t_logits = student(input_ids=x).logits, t(input_ids=x).logits
        assert s_logits.dtype == torch.bfloat16  # the premise: autocast really runs the head in bf16
        lm_value, distill_value = lm.loss(student, x), distill.loss(student, x)
    assert lm_value.dtype == distill_value.dtype == torch.float32
    assert lm_value.item() == pytest.approx(hand_lm_loss(s_logits, x).item(), rel=1e-5)
    assert distill_value.item() == pytest.approx(hand_distill_loss(s_logits, t_logits, x, 0.3, 2.0).item(), rel=1e-5)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, for FSDP2's ``fully_shard`` on CPU (removed afterwards)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_lm_and_distill_losses_are_float32_under_fsdp_bf16_mixed_precision(process_group):
    """FSDP2 with ``MixedPrecisionPolicy(bf16, output_dtype=bf16)`` (accelerate's bf16 for FSDP, what
    ``configs/accelerate/fsdp.yaml`` runs) casts everything the model returns to bf16, its own ``loss``
    included; the objectives compute theirs in float32 from the logits, so the logged and optimised
    loss has float32 precision (equal to the hand-upcast loss to 1e-5, not to bf16's 2^-9)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    t = teacher()
    student = convert_model(t, "dijiang")
    lm = make_objective("lm", student, None)
    distill = make_objective("distill", student, t, {"alpha": 0.3, "temperature": 2.0})
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, output_dtype=torch.bfloat16)
    for layer in student.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(student, mp_policy=policy)
    x = ids()
    with torch.no_grad():
        own = student(input_ids=x, labels=x)
        assert own.loss.dtype == own.logits.dtype == torch.bfloat16  # the premise: the model's own loss is bf16
        s_logits, t_logits = own.logits, t(input_ids=x).logits
    lm_value = lm.loss(student, x)
    assert lm_value.dtype == torch.float32
    assert lm_value.item() == pytest.approx(hand_lm_loss(s_logits, x).item(), rel=1e-5)
    lm_value.backward()  # and it trains: gradients reach the sharded fp32 parameters
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    distill_value = distill.loss(student, x)
    assert distill_value.dtype == torch.float32
    assert distill_value.item() == pytest.approx(hand_distill_loss(s_logits, t_logits, x, 0.3, 2.0).item(), rel=1e-5)


def test_transfer_loss_is_float32_under_bf16_autocast():
    """The attention-transfer MSE is float32 from bf16 mixer outputs."""
    t = teacher()
    student = convert_model(t, "dijiang")
    obj = make_objective("transfer", student, t)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        value = obj.loss(student, ids())
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_the_transfer_stage_refuses_a_multi_process_launch_in_one_line(monkeypatch):
    from harness.cli.train import check_engine
    from harness.training.config import TrainConfig, TrainConfigError

    config = TrainConfig.from_dict({"objective": "transfer", "teacher": "/t", "model": "/t", "mixer": "dijiang"})
    check_engine(config)  # one process: runs
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainConfigError, match="runs in one process"):
        check_engine(config)
    check_engine(TrainConfig.from_dict({"objective": "lm", "model": "/t", "mixer": "dijiang"}))  # others run
