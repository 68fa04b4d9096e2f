"""Trainable scope of the encoder: `head` (frozen encoder), `lora` (peft adapters) or `full`.

Only what a scope trains is saved with a model: nothing for `head`, the LoRA adapter tensors for `lora`, the
whole encoder for `full`; ``restore_encoder`` rebuilds the same encoder from the base weights plus that delta.
"""
from __future__ import annotations

from typing import Any

import torch

from components.config import LoraConfig
from components.encoder import TextEncoder


def prepare_encoder(encoder: TextEncoder, scope: str, lora: LoraConfig) -> TextEncoder:
    """Freeze or wrap the encoder for a scope (in place); returns it for chaining."""
    if scope == "head":
        encoder.requires_grad_(False)
    elif scope == "lora":
        from peft import LoraConfig as PeftLoraConfig, get_peft_model  # slow import

        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules))
        encoder.model = get_peft_model(encoder.model, config)
    elif scope == "full":
        encoder.requires_grad_(True)
    else:
        raise ValueError(f"unknown scope {scope!r}; expected head, lora or full")
    return encoder


def encoder_delta(encoder: TextEncoder, scope: str) -> dict[str, torch.Tensor] | None:
    """The tensors a scope changed, to ship with the model."""
    if scope == "head":
        return None
    if scope == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(encoder.model).items()}
    return {k: v.detach().cpu().clone() for k, v in encoder.model.state_dict().items()}


def restore_encoder(encoder: TextEncoder, scope: str, lora: dict[str, Any] | None,
                    state: dict[str, torch.Tensor] | None) -> TextEncoder:
    """Apply a saved delta to a freshly loaded base encoder (LoRA merged for plain inference speed)."""
    if scope == "head" or not state:
        return encoder
    if scope == "lora":
        from peft import set_peft_model_state_dict

        prepare_encoder(encoder, "lora", LoraConfig(**(lora or {})))
        set_peft_model_state_dict(encoder.model, state)
        encoder.model = encoder.model.merge_and_unload()
    else:
        encoder.model.load_state_dict(state)
    encoder.requires_grad_(False)
    return encoder.eval()
