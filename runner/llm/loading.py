"""Which model a lab or grader loads, and loading it: `transformers` from_pretrained with a
hub id or a local folder. The setting is an environment variable; left unset, it is the
project's own model committed under runner/llm/weights/, which needs no network.

    INFERENCE_ROADMAP_MODEL=meta-llama/Llama-3.1-8B        # where a hub is reachable
    INFERENCE_ROADMAP_DRAFT_MODEL=/models/my-draft         # a local folder
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LOCAL_MODELS = {"target": WEIGHTS_DIR / "target", "draft": WEIGHTS_DIR / "draft"}
MODEL_SETTINGS = {
    "target": "INFERENCE_ROADMAP_MODEL",
    "draft": "INFERENCE_ROADMAP_DRAFT_MODEL",
}


def model_name(role: str = "target", *, environ: Mapping[str, str] | None = None) -> str:
    """The hub id or folder that the setting names, else the committed model's folder."""
    if role not in MODEL_SETTINGS:
        raise ValueError(f"unknown model role {role!r}; expected target or draft")
    environ = os.environ if environ is None else environ
    chosen = environ.get(MODEL_SETTINGS[role], "").strip()
    return chosen or str(LOCAL_MODELS[role])


def is_local(name: str) -> bool:
    return Path(name).is_dir()


def load_model(name: str | None = None, *, role: str = "target", device: str = "cpu", dtype=None):
    """A causal LM in eval mode. `name` (a hub id or a folder) wins over the setting; a hub
    id goes to from_pretrained unchanged. dtype None keeps float32, the safe default for CPU
    graders; pass torch.bfloat16 for the precision the weights are stored in."""
    import torch
    from transformers import AutoModelForCausalLM

    name = name or model_name(role)
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=dtype or torch.float32,
        # A folder that exists is read as it is; never ask a hub about it.
        local_files_only=is_local(name),
    )
    return model.to(device).eval()


def load_tokenizer(name: str | None = None, *, role: str = "target"):
    from transformers import AutoTokenizer

    name = name or model_name(role)
    return AutoTokenizer.from_pretrained(name, local_files_only=is_local(name))
