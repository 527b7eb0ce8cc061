#!/usr/bin/env bash
# Train the project's target and draft models on a GPU node, from the committed corpus and
# tokenizer (runner/llm/data/), and pack what the repository commits. Needs only the node's
# Python with CUDA torch, transformers, tokenizers and safetensors: no network, no Django.
#
#   bench/train_models_gpu.sh
#   BUDGET_S=150 EPOCHS=4,8,16,32 OUT=/tmp/out bench/train_models_gpu.sh
#
# OUT (default var/llm-gpu) receives six files: llm-models.tar.gz (target/ and draft/, each a
# save_pretrained folder with its training.json), DATA_CARD.md, summary.json (both
# training.json plus the card's name and versions), target.log, draft.log, nvidia-smi.txt.
# Back in the repository:
#
#   tar -xzf $OUT/llm-models.tar.gz -C runner/llm/weights/
#   python -m runner.llm.build card && python -m pytest tests/runner/test_llm.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-var/llm-gpu}
BUDGET_S=${BUDGET_S:-150}   # wall-clock seconds per model, split between the epoch caps
EPOCHS=${EPOCHS:-4,8,16,32} # epoch caps tried; the lowest validation loss is kept
DEVICE=${DEVICE:-cuda}      # DEVICE=cpu BUDGET_S=10 checks the script on a machine without one
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
  --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true

for role in target draft; do
  "$PY" -m runner.llm.train --role "$role" --device "$DEVICE" --seconds "$BUDGET_S" \
    --epochs "$EPOCHS" --out "$WORK/$role" 2>&1 | tee "$OUT/$role.log"
done

"$PY" -m runner.llm.build card --weights "$WORK" --card "$OUT/DATA_CARD.md"
tar -C "$WORK" -czf "$OUT/llm-models.tar.gz" target draft
"$PY" - "$WORK" "$OUT/summary.json" <<'PY'
import json, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
models = {r: json.loads((work / r / "training.json").read_text()) for r in ("target", "draft")}
summary = {
    "format": "inference-roadmap-llm-gpu-training",
    "device": models["target"]["machine"],
    "models": models,
    "files": {r: sorted(p.name for p in (work / r).iterdir()) for r in models},
}
out.write_text(json.dumps(summary, indent=2) + "\n")
for role, s in models.items():
    runs = ", ".join("%g epochs: %d steps" % (r["max_epochs"], r["steps"]) for r in s["runs"])
    print(
        f"{role}: {s['parameters']:,} parameters, held-out perplexity "
        f"{s['heldout']['perplexity']:.2f} (untrained {s['heldout']['perplexity_at_init']:.0f}), "
        f"kept step {s['steps']} of run {s['chosen_run']} ({runs})"
    )
PY
ls -la "$OUT"
