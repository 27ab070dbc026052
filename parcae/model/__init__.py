"""Looped language models: config, variants, the model and its initialisation."""

from parcae.model.config import PRESETS, ModelConfig
from parcae.model.init import init_weights
from parcae.model.injection import INJECTIONS
from parcae.model.looped import LoopedLM


def build_model(cfg: ModelConfig) -> LoopedLM:
    model = LoopedLM(cfg)
    init_weights(model)
    return model


__all__ = ["INJECTIONS", "PRESETS", "LoopedLM", "ModelConfig", "build_model", "init_weights"]
