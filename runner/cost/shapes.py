"""Model shapes: what the cost model needs to know about an LLM, read from models.toml.

A decoder-only transformer's serving cost follows from a handful of numbers: how many
parameters every token multiplies through (weights read per decode step, FLOPs per token) and
how many key/value bytes each token leaves in the cache (layers x kv_heads x head_dim).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODELS_FILE = "models.toml"  # next to this module

_INT_FIELDS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab")


class ModelShapeError(ValueError):
    """A model description that cannot be used; the message names the model and the field."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    source: str = ""

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """Bytes one token adds to the KV cache: a key and a value vector per layer, each
        kv_heads x head_dim elements. 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_element

    def weight_bytes(self, bytes_per_param: float) -> float:
        return self.params * bytes_per_param

    @property
    def flops_per_token(self) -> float:
        """Matmul FLOPs of one token's forward pass: a multiply and an add per parameter.
        Attention over the context (4 x layers x hidden x context) is left out: below a few
        thousand tokens of context it is a small fraction of this."""
        return 2 * self.params

    def params_from_shapes(self) -> int:
        """The parameter count these shapes give (Llama layout: q, k, v, o projections, a
        SwiGLU MLP of three matrices, two RMSNorms per layer, embeddings, final norm, head)."""
        attention = self.hidden * self.heads * self.head_dim  # q
        attention += 2 * self.hidden * self.kv_heads * self.head_dim  # k, v
        attention += self.heads * self.head_dim * self.hidden  # o
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * per_layer + self.hidden

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> ModelShape:
        """From a dict such as a models.toml table or to_plain(); ModelShapeError naming the
        field when one is missing or not a positive number."""
        if not isinstance(data, Mapping):
            raise ModelShapeError("a model description must be a table")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ModelShapeError("a model needs a non-empty name")
        values: dict[str, Any] = {}
        for key in _INT_FIELDS:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelShapeError(f"model {name}: {key} must be a positive integer")
            values[key] = value
        params = data.get("params")
        if isinstance(params, bool) or not isinstance(params, int | float):
            raise ModelShapeError(f"model {name}: params must be a number")
        if not math.isfinite(params) or params <= 0:
            raise ModelShapeError(f"model {name}: params must be positive")
        if values["heads"] % values["kv_heads"]:
            raise ModelShapeError(f"model {name}: heads must be a multiple of kv_heads")
        return cls(
            name=name,
            params=float(params),
            tied_embeddings=bool(data.get("tied_embeddings", False)),
            source=str(data.get("source", "")),
            **values,
        )


def load_models(path: Path | str | None = None) -> dict[str, ModelShape]:
    """Every [[model]] of models.toml (or the file at `path`) by name."""
    path = Path(path) if path is not None else Path(__file__).resolve().parent / MODELS_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelShapeError(f"{path}: cannot be read ({exc})") from None
    models: dict[str, ModelShape] = {}
    for table in raw.get("model", []):
        model = ModelShape.from_plain(table)
        if model.name in models:
            raise ModelShapeError(f"{path}: model {model.name} is described twice")
        models[model.name] = model
    if not models:
        raise ModelShapeError(f"{path}: no [[model]] tables")
    return models
