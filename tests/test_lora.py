"""LoRA: starts equal to the base model, trains only adapters, merges back exactly."""

from __future__ import annotations

import pytest
import torch

from minimind.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora
from minimind.model import MiniMindForCausalLM, preset_config


def tiny_model() -> MiniMindForCausalLM:
    torch.manual_seed(0)
    return MiniMindForCausalLM(preset_config("tiny", vocab_size=300, num_hidden_layers=2))


def test_lora_trains_adapters_only_and_merges_exactly() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 300, (2, 24))
    reference = model(input_ids=ids).logits
    wrapped = apply_lora(model, LoRAConfig(enabled=True, rank=4, alpha=8.0))
    assert len(wrapped) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    torch.testing.assert_close(model(input_ids=ids).logits, reference)  # B = 0 at start
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    adapted = model(input_ids=ids).logits.detach()

    assert merge_lora(model) == 14
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(before)  # plain names again: export sees a base model
    torch.testing.assert_close(model(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    for name, value in model.state_dict().items():  # only targeted weights moved
        changed = not torch.equal(value, before[name])
        assert changed == name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                         "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                                         "down_proj.weight")), name


def test_unknown_targets_are_an_error() -> None:
    with pytest.raises(ValueError, match="no linear layer named any of"):
        apply_lora(tiny_model(), LoRAConfig(enabled=True, target_modules=["nope"]))
