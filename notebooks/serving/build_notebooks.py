"""Write the serving lab's notebooks: the starter, the reference solution and the test fixtures.

Run from the repository root after changing any notebook text here, reference_solution.py or
wrong_solutions.py:

    .venv/bin/python notebooks/serving/build_notebooks.py

The generated .ipynb files are committed; tests read them as real uploads would arrive.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # notebooks/notebook_build.py

from notebook_build import LOCKED, notebook  # noqa: E402

FIXTURES = HERE / "fixtures"

INTRO = """\
# Serving: continuous batching with a paged KV cache

**Milestone:** *Model Serving & Quantization* - "quantize a 7B LLM, serve it, and demonstrate 3x
throughput with <1% quality loss". The quantization lab shrank the weights; this lab is the
other half: serving many requests at once without wasting the GPU or its memory.

An LLM server decodes one token per running request per **step** (one forward pass of the
batch). Two decisions make or break its throughput:

1. **Which requests run in each step.** *Static batching* takes a batch, runs it until its
   longest answer is done, then takes the next batch: requests that finish early leave empty
   slots, and new requests wait for the whole batch. *Continuous batching* (iteration-level
   scheduling, Orca) decides again at every step: a finished request leaves at once and a
   waiting one joins at the next step.
2. **Where each request's keys and values (the KV cache) live.** Reserving room for the
   longest possible answer up front wastes most of it. *Paged attention* (vLLM) splits the
   cache into fixed-size **blocks** and gives a request one more block only when it needs one,
   through a **block table**, as an OS pages memory. More requests fit; when memory does run
   out, the scheduler **preempts** a request (frees its blocks, recomputes it later).

You will write the **scheduler** and the **block manager** of the project's serving engine
(`runner/serving/engine`). The engine owns the model and the cache; it asks your scheduler what
to run at each step and your block manager where each token's K/V goes, checks every answer,
and serves an OpenAI-compatible streaming API. The grader measures it from outside with a load
harness that uses vLLM's metric definitions (TTFT, TPOT, ITL, throughput).

**Read**:
- Yu et al., *Orca: A Distributed Serving System for Transformer-Based Generative Models*
  (OSDI 2022), section 3: iteration-level scheduling and selective batching.
- Kwon et al., *Efficient Memory Management for Large Language Model Serving with
  PagedAttention* ([arXiv:2309.06180](https://arxiv.org/abs/2309.06180)), sections 3-4:
  blocks, block tables, preemption by recomputation or swapping.
- vLLM's docs on the metrics: *time to first token* (TTFT), *time per output token* (TPOT =
  (end-to-end latency - TTFT) / (output tokens - 1)), *inter-token latency* (ITL).
"""

SETUP_CODE = """\
from IPython.display import SVG, display

from runner.serving import lab_tools
from runner.serving.loadgen import latency_cdf_svg

# The lab's CPU scale (lab.toml): 64 blocks of 16 token slots, at most 16 sequences running.
settings = dict(lab_tools.CPU_SETTINGS)
workload = lab_tools.sample_workload(16, seed=0)
print(f"{len(workload)} requests: prompts of {min(map(len, workload.prompts))}-"
      f"{max(map(len, workload.prompts))} tokens, answers of {min(workload.max_tokens)}-"
      f"{max(workload.max_tokens)} tokens")
"""

STATIC_MD = """\
## 1. Static batching, measured

The baseline reserves K/V for `max_model_len` = 192 tokens per sequence up front (it cannot know
how long an answer will be): 12 blocks each, so only 5 sequences fit in 64 blocks, though most
need 3-8 blocks. And it admits a new batch only when the whole previous one is done. Watch the
batch size per step:
"""

STATIC_CODE = """\
engine = lab_tools.build_engine(lab_tools.static_scheduler(settings), settings)
engine.generate(workload.prompts, max_tokens=workload.max_tokens)
sizes = [s.num_prefill + s.num_decode for s in engine.stats]
print(f"{engine.num_steps} steps; running sequences per step: mean {sum(sizes) / len(sizes):.1f},"
      f" max {max(sizes)} (of max_num_seqs={settings['max_num_seqs']})")
print("per step:", " ".join(map(str, sizes[:80])), "...")
"""

TASK_MD = """\
## 2. Your turn: `BlockManager` and `Scheduler`

The engine builds them as

```python
Scheduler(BlockManager(num_blocks, block_size), max_num_seqs=..., max_num_batched_tokens=...)
```

and then, every step, calls `scheduler.schedule()` and runs what it returns: a
`ScheduledBatch(prefill=[...], decode=[...], preempted=[...])`. It then asks
`scheduler.block_manager.block_table(seq)` where each sequence's K/V goes, appends one token to
every sequence that ran, and calls `scheduler.finish(seq)` for each one that is done. It also
calls `scheduler.add(seq)` for each new request and `scheduler.has_unfinished()`.

A `Sequence` has `seq_id`, `prompt_ids`, `output_ids`, `max_tokens`, `arrival_time`,
`status` ("waiting", "running", "finished") and `num_tokens` (prompt + output so far).

The rules the engine checks every step (a broken one stops it with a message naming the rule):
- **prefill** only sequences with nothing in the cache yet (new, or preempted); they run all
  their `num_tokens`. **decode** only sequences already prefilled; each runs one token.
- a sequence's block table covers its positions (position `p` is in block
  `table[p // block_size]`, slot `p % block_size`): a decode needs room for `num_tokens`
  positions, so grow the table (`append_slot`) before returning it;
- no block is in two sequences' tables; block ids are in `range(num_blocks)`; the blocks that
  hold a sequence's cached K/V never change;
- at most `max_num_seqs` sequences per step; the prompts prefilled in one step total at most
  `max_num_batched_tokens` (a longer prompt may run alone);
- `preempted` sequences have had their blocks freed and wait again; they will be prefilled
  from scratch (prompt + the outputs so far);
- a scheduler that schedules nothing for 8 steps while requests wait has stalled.

Your scheduler must produce exactly the tokens each request gets alone (the engine computes
them; your job is to never corrupt a sequence's K/V), and beat static batching.
"""

STARTER_SOLUTION = '''\
from collections import deque  # noqa: F401 - for your code

from runner.serving.engine import ScheduledBatch, Sequence  # noqa: F401 - for your code


class BlockManager:
    """Hands out KV-cache blocks: a free list and a block table per sequence."""

    def __init__(self, num_blocks, block_size):
        self.num_blocks = num_blocks
        self.block_size = block_size

    @property
    def num_free_blocks(self):
        raise NotImplementedError("BlockManager.num_free_blocks is not written yet")

    def can_allocate(self, num_tokens):
        raise NotImplementedError("BlockManager.can_allocate() is not written yet")

    def allocate(self, seq):
        raise NotImplementedError(
            "BlockManager.allocate() is not written yet: take ceil(seq.num_tokens / "
            "block_size) blocks off the free list and record them as seq's block table"
        )

    def can_append(self, seq):
        raise NotImplementedError("BlockManager.can_append() is not written yet")

    def append_slot(self, seq):
        raise NotImplementedError("BlockManager.append_slot() is not written yet")

    def free(self, seq):
        raise NotImplementedError("BlockManager.free() is not written yet")

    def block_table(self, seq):
        raise NotImplementedError("BlockManager.block_table() is not written yet")


class Scheduler:
    """Continuous batching: decide at every step which sequences run."""

    def __init__(self, block_manager, *, max_num_seqs, max_num_batched_tokens):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens

    def add(self, seq):
        raise NotImplementedError("Scheduler.add() is not written yet")

    def schedule(self):
        raise NotImplementedError(
            "Scheduler.schedule() is not written yet: make room for every running "
            "sequence's next token (preempt when no block is free), admit waiting sequences "
            "while blocks and limits allow, and return ScheduledBatch(prefill=..., decode=..., "
            "preempted=...)"
        )

    def finish(self, seq):
        raise NotImplementedError("Scheduler.finish() is not written yet")

    def has_unfinished(self):
        raise NotImplementedError("Scheduler.has_unfinished() is not written yet")
'''

CHECK_MD = """\
## 3. Check it here

First the tokens: every request at once through your scheduler, against each prompt generated
alone. Then the grader's measurement in small: static batching and yours, each behind the
OpenAI-compatible server on a Unix socket, sent every request at once by the load harness.
The grader does the same with a secret workload, in sandboxed processes.
"""

CHECK_CODE = """\
lab_tools.check_tokens(Scheduler, BlockManager, workload[:6], settings=settings)
runs = {}
summaries = lab_tools.compare(
    Scheduler, BlockManager, workload, settings=settings,
    on_result=lambda name, result: runs.setdefault(name, result.outputs),
)
display(SVG(latency_cdf_svg(runs)))
"""

VLLM_MD = """\
## 4. The same harness against vLLM

The load harness speaks to any OpenAI-compatible server. Where the `vllm` package is installed
(a GPU node with it), `vllm serve <model>` and then
`python -m runner.serving.loadgen --base-url http://127.0.0.1:8000 --model <model> ...` measure
it with the same definitions. This cell says whether this machine has it; it never pretends.
"""

VLLM_CODE = """\
import importlib.util

if importlib.util.find_spec("vllm") is None:
    print("vLLM is not installed here: the comparison with vLLM is not run on this machine.")
else:
    import vllm

    print(f"vLLM {vllm.__version__} is installed: see docs/labs/serving.md to run it.")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page. The grader runs every cell, then loads **only
the cells tagged `solution`** into a sandboxed process and builds the engine with your
`Scheduler` and `BlockManager`; a second, clean process runs the static-batching baseline. Both
serve the same model with the same KV blocks and limits; the load harness runs outside both,
over a Unix socket. Graded:

- **completed**: every request of a burst answered to the end;
- **correct tokens**: each request's tokens equal its prompt's greedy tokens generated alone;
- **throughput gain**: your output tokens/s over static batching's on the same burst;
- **p99 TTFT**: for a Poisson stream of requests at the graded rate, against the SLO.
"""


def without_docstring(path: Path) -> str:
    """A module's source from its first import on: the solution cell needs no module docstring
    (it says where the file lives, which a learner's notebook does not)."""
    source = path.read_text()
    body = ast.parse(source).body[1:]  # body[0] is the docstring
    # `from __future__` must open a file; in a notebook cell it is not needed.
    first = next(n for n in body if not isinstance(n, ast.ImportFrom) or n.module != "__future__")
    return "\n".join(source.splitlines()[first.lineno - 1 :]) + "\n"


REFERENCE_SOLUTION = without_docstring(HERE / "reference_solution.py")


def _wrong(name: str) -> str:
    """One class of wrong_solutions.py, as source."""
    source = (HERE / "wrong_solutions.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ast.get_source_segment(source, node) + "\n"
    raise LookupError(name)


def with_wrong(name: str, replaces: str) -> str:
    """The reference solution with one of its classes replaced by a known-wrong subclass."""
    return f"{REFERENCE_SOLUTION}\n\n{_wrong(name)}\n\n{replaces} = {name}\n"


# Cheat: skip the model and return the same logits for every sequence, to look fast. The
# tokens are wrong, and the correctness criterion fails.
SKIP_MODEL = (
    REFERENCE_SOLUTION
    + """

import torch

from runner.serving.engine import model_runner


def _no_model(self, items):
    logits = torch.zeros(len(items), self.vocab_size)
    logits[:, 1] = 1.0
    return logits


model_runner.PagedLlama.forward = _no_model  # the cheat
"""
)


def build(solution: str):
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_code_cell(SETUP_CODE, id="setup", metadata=dict(LOCKED)),
        new_markdown_cell(STATIC_MD, id="static-md"),
        new_code_cell(STATIC_CODE, id="static", metadata=dict(LOCKED)),
        new_markdown_cell(TASK_MD, id="task-md"),
        new_code_cell(solution, id="solution", metadata={"tags": ["solution"]}),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="self-check", metadata=dict(LOCKED)),
        new_markdown_cell(VLLM_MD, id="vllm-md"),
        new_code_cell(VLLM_CODE, id="vllm", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
    ]
    return notebook(cells)


def fixtures() -> dict[str, object]:
    return {
        "shared_blocks.ipynb": build(with_wrong("SharedBlockManager", "BlockManager")),
        "leaky_blocks.ipynb": build(with_wrong("LeakyBlockManager", "BlockManager")),
        "no_preempt.ipynb": build(with_wrong("NoPreemptScheduler", "Scheduler")),
        "static_like.ipynb": build(with_wrong("StaticLikeScheduler", "Scheduler")),
        "skip_model.ipynb": build(SKIP_MODEL),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_SOLUTION), HERE / "serving.ipynb")
    nbformat.write(build(REFERENCE_SOLUTION), HERE / "reference.ipynb")
    made = fixtures()
    for name, nb in made.items():
        nbformat.write(nb, FIXTURES / name)
    print(f"wrote {HERE / 'serving.ipynb'}, reference.ipynb and {len(made)} fixtures")


if __name__ == "__main__":
    main()
