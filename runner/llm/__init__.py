"""The project's own small Llama models and how labs load them (see docs/models.md).

    from runner.llm import load_model, load_tokenizer
    model = load_model()                  # INFERENCE_ROADMAP_MODEL, else the committed target
    draft = load_model(role="draft")      # INFERENCE_ROADMAP_DRAFT_MODEL, else the draft

Importing this package imports neither torch nor transformers; loading does.
"""

from __future__ import annotations

from runner.llm.loading import (
    LOCAL_MODELS,
    MODEL_SETTINGS,
    load_model,
    load_tokenizer,
    model_name,
)

__all__ = ["LOCAL_MODELS", "MODEL_SETTINGS", "load_model", "load_tokenizer", "model_name"]
