"""The project's own small Llama models (runner/llm/): the corpus is rebuilt byte for byte,
its splits never share a document, the tokenizer gives text back exactly, the committed
models load by path with the architecture the data card states, the model setting chooses a
hub id or a folder, and training lowers the loss."""

from __future__ import annotations

import gzip
import json
import math
import platform
from pathlib import Path

import pytest
import torch

from runner.llm import architecture, card, corpus, loading
from runner.llm import tokenizer as tokenization
from runner.llm.train import (
    SUMMARY_NAME,
    Data,
    TrainingOptions,
    mean_loss,
    new_model,
    prepare_data,
    train_and_save,
    train_once,
)

MODULES = {
    "alpha.py": '"""Alpha: the first module of the fake standard library."""\n'
    "def f():\n"
    '    """Return nothing, but say so at some length."""\n',
    "pkg/__init__.py": '"""A package whose docstring is long enough to keep."""\n',
    "pkg/beta.py": "class B:\n"
    '    """B does things with numbers and strings."""\n'
    "    def g(self):\n"
    '        """Return nothing, but say so at some length."""\n',  # a duplicate: dropped
    "pkg/test/test_beta.py": '"""Tests are not documentation and stay out."""\n',
    "broken.py": "def (:\n",  # unparsable: skipped, not fatal
}


def fake_stdlib(root: Path) -> Path:
    for name, source in MODULES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def expected_parameters(shape: dict[str, int], vocab: int) -> int:
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = hidden // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    return vocab * hidden + shape["num_hidden_layers"] * per_layer + hidden  # tied head


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    # These models are tiny: on a busy 2-core machine a second thread mostly waits for the
    # first (measured: 20x slower steps with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def committed_documents() -> list[corpus.Document]:
    return corpus.read_corpus()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(corpus.MANIFEST_PATH.read_text(encoding="utf-8"))


# The corpus


def test_corpus_build_gives_the_same_bytes_twice(tmp_path):
    root = fake_stdlib(tmp_path / "lib")
    first = corpus.write_corpus(
        corpus.collect(root), path=tmp_path / "a.jsonl.gz", manifest=tmp_path / "a.json"
    )
    second = corpus.write_corpus(
        corpus.collect(root), path=tmp_path / "b.jsonl.gz", manifest=tmp_path / "b.json"
    )
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert first["sha256"] == second["sha256"]
    sources = [d.source for d in corpus.read_corpus(tmp_path / "a.jsonl.gz")]
    assert sources == ["alpha", "alpha:f", "pkg", "pkg.beta:B"]


def test_committed_corpus_is_what_this_interpreter_builds(manifest):
    if manifest["python"] != platform.python_version():
        pytest.skip(f"the corpus comes from Python {manifest['python']}'s standard library")
    raw = corpus.serialize(corpus.collect())
    assert corpus.hashlib.sha256(raw).hexdigest() == manifest["sha256"]
    assert gzip.decompress(corpus.CORPUS_PATH.read_bytes()) == raw


def test_committed_corpus_matches_its_manifest_and_the_data_card(manifest):
    assert corpus.corpus_sha256() == manifest["sha256"]
    assert manifest["sha256"] in card.CARD_PATH.read_text(encoding="utf-8")
    assert manifest["licence"] == "Python Software Foundation License Version 2"
    assert corpus.CORPUS_PATH.stat().st_size < 4 * 1024 * 1024


def test_training_refuses_a_corpus_that_is_not_its_manifests(tmp_path, committed_documents):
    path, manifest = tmp_path / "corpus.jsonl.gz", tmp_path / "corpus.json"
    corpus.write_corpus(committed_documents[:50], path=path, manifest=manifest)
    path.write_bytes(gzip.compress(corpus.serialize(committed_documents[:49]), mtime=0))
    with pytest.raises(corpus.CorpusMismatch):
        prepare_data(TrainingOptions(corpus_path=path))


def test_heldout_and_validation_splits_share_no_module_or_text(committed_documents):
    units = {s: {d.unit for d in committed_documents if d.split == s} for s in corpus.SPLITS}
    texts = {s: set(corpus.texts(committed_documents, s)) for s in corpus.SPLITS}
    for a, b in [("train", "heldout"), ("train", "valid"), ("valid", "heldout")]:
        assert not units[a] & units[b]
        assert not texts[a] & texts[b]
    assert all(d.split == corpus.split_of(d.unit) for d in committed_documents)
    heldout_share = len(units["heldout"]) / sum(len(u) for u in units.values())
    assert 0.04 < heldout_share < 0.16
    assert not any(".test." in d.unit or d.unit.startswith("test.") for d in committed_documents)


def test_rebuilding_the_corpus_on_another_python_is_refused(monkeypatch):
    from runner.llm import build

    def must_not_run(*args, **kwargs):
        raise AssertionError("the committed corpus would have been overwritten")

    monkeypatch.setattr(build.platform, "python_version", lambda: "3.99.0")
    monkeypatch.setattr(build.corpus, "collect", must_not_run)
    monkeypatch.setattr(build.corpus, "write_corpus", must_not_run)
    with pytest.raises(SystemExit, match="--force"):
        build.build_corpus(force=False)


# The tokenizer

SAMPLES = [
    "Return the sum of *a* and *b*.\n\n    >>> add(1, 2)\n    3",
    "  leading spaces, tabs\tand trailing newline\n",
    "Unicode: é, ß, 東京, emoji 🐍 and a zero-width joiner \u200d.",
    "",
]


def test_tokenizer_gives_back_any_text_exactly():
    tokenizer = tokenization.load_tokenizer()
    assert tokenizer.get_vocab_size() == tokenization.VOCAB_SIZE
    eos = tokenizer.token_to_id(tokenization.EOS)
    for text in SAMPLES:
        ids = tokenizer.encode(text).ids
        assert ids[0] == eos  # every text starts as a document does in training
        assert tokenizer.decode(ids) == text


def test_model_folders_carry_the_same_tokenizer_for_transformers():
    raw = tokenization.load_tokenizer()
    for role in architecture.ROLES:
        wrapped = loading.load_tokenizer(role=role)
        for text in SAMPLES:
            assert wrapped(text)["input_ids"] == raw.encode(text).ids
        assert wrapped.eos_token == tokenization.EOS and wrapped.pad_token == tokenization.PAD


def test_tokenizer_training_is_deterministic(committed_documents):
    texts = corpus.texts(committed_documents[:300], "train")
    first = tokenization.train_tokenizer(texts, vocab_size=600)
    second = tokenization.train_tokenizer(texts, vocab_size=600)
    assert first.to_str() == second.to_str()


# The committed models


@pytest.mark.parametrize("role", architecture.ROLES)
def test_committed_model_loads_by_path_with_the_stated_architecture(role):
    from safetensors import safe_open

    folder = loading.LOCAL_MODELS[role]
    model = loading.load_model(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM"
    for key, value in architecture.SHAPES[role].items():
        assert getattr(model.config, key) == value
    vocab = model.config.vocab_size
    assert vocab == tokenization.VOCAB_SIZE
    count = architecture.parameter_count(model)
    assert count == expected_parameters(architecture.SHAPES[role], vocab)
    assert (3_000_000 <= count <= 6_000_000) if role == "target" else (count <= 1_500_000)
    summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["parameters"] == count

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}  # noqa: SIM118

    ids = torch.tensor([[0, 402, 265, 407, 78, 302]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 6, vocab)
    assert torch.isfinite(logits).all()
    generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert generated.shape == (1, 10)


@pytest.mark.parametrize("role", architecture.ROLES)
def test_committed_model_beats_its_untrained_self_on_heldout_text(role):
    summary = json.loads((loading.LOCAL_MODELS[role] / SUMMARY_NAME).read_text("utf-8"))
    heldout = summary["heldout"]
    assert math.isfinite(heldout["perplexity"])
    assert heldout["perplexity"] < heldout["perplexity_at_init"]
    assert summary["corpus_sha256"] == corpus.corpus_sha256()


def test_data_card_is_the_one_the_committed_artefacts_give(manifest):
    expected = card.render_card(
        manifest=manifest,
        summaries=card.read_summaries(),
        tokenizer_sha256=corpus.hashlib.sha256(
            tokenization.TOKENIZER_PATH.read_bytes()
        ).hexdigest(),
    )
    assert card.CARD_PATH.read_text(encoding="utf-8") == expected, (
        "DATA_CARD.md is stale: run python -m runner.llm.build card"
    )


@pytest.mark.parametrize(
    ("shape", "parameters"), [("llama-2-7b", 6_738_415_616), ("llama-3-8b", 8_030_261_248)]
)
def test_random_large_shapes_have_their_published_parameter_counts(shape, parameters):
    model = architecture.random_model(shape, device="meta")  # structure only, no memory
    assert type(model).__name__ == "LlamaForCausalLM"
    assert architecture.parameter_count(model) == parameters
    assert model.dtype == torch.bfloat16


# The setting that chooses a model


def test_model_setting_defaults_to_the_committed_folders():
    assert loading.model_name("target", environ={}) == str(loading.LOCAL_MODELS["target"])
    assert loading.model_name("draft", environ={}) == str(loading.LOCAL_MODELS["draft"])
    assert loading.model_name("target", environ={"INFERENCE_ROADMAP_MODEL": " "}) == str(
        loading.LOCAL_MODELS["target"]
    )
    with pytest.raises(ValueError):
        loading.model_name("teacher", environ={})


def test_a_hub_id_goes_to_from_pretrained_unchanged(monkeypatch):
    import transformers

    calls: list[tuple[str, dict]] = []

    class Recorded:
        def to(self, device):
            calls.append(("to", {"device": device}))
            return self

        def eval(self):
            return self

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return Recorded()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setenv("INFERENCE_ROADMAP_MODEL", "meta-llama/Llama-3.1-8B")
    monkeypatch.setenv("INFERENCE_ROADMAP_DRAFT_MODEL", str(loading.LOCAL_MODELS["draft"]))

    loading.load_model(dtype=torch.bfloat16)
    loading.load_tokenizer()
    loading.load_model(role="draft")
    assert calls[0] == (
        "meta-llama/Llama-3.1-8B",
        {"dtype": torch.bfloat16, "local_files_only": False},
    )
    assert calls[2] == ("meta-llama/Llama-3.1-8B", {"local_files_only": False})
    assert calls[3] == (
        str(loading.LOCAL_MODELS["draft"]),
        {"dtype": torch.float32, "local_files_only": True},
    )


# Training


def small_data(documents: list[corpus.Document], tokens: int = 6000) -> Data:
    tokenizer = tokenization.load_tokenizer()
    streams = {}
    for split in corpus.SPLITS:
        stream = tokenization.encode_documents(tokenizer, corpus.texts(documents, split))
        streams[split] = torch.tensor(stream[:tokens], dtype=torch.long)
    return Data(tokenizer=tokenizer, streams=streams, corpus_sha256="", tokenizer_sha256="")


def test_a_few_training_steps_lower_the_heldout_loss(committed_documents):
    data = small_data(committed_documents)
    options = TrainingOptions(
        role="draft", batch_size=4, seq_len=64, warmup_steps=3, evals=1, lr=3e-3
    )
    device = torch.device("cpu")
    torch.manual_seed(options.seed)
    before = mean_loss(
        new_model("draft", data.tokenizer, device),
        data.streams["heldout"],
        seq_len=64,
        device=device,
    )
    # 40 steps of 256 tokens: bounded by the epoch cap, not the clock.
    run = train_once(
        options, data, max_epochs=40 * 256 / len(data.streams["train"]), seconds=120, device=device
    )
    assert run.stopped_by == "epochs" and run.steps == 40
    model = new_model("draft", data.tokenizer, device)
    model.load_state_dict(run.state)
    after = mean_loss(model, data.streams["heldout"], seq_len=64, device=device)
    assert after < before - 0.5
    assert run.loss_curve[-1]["loss"] < run.loss_curve[0]["loss"]


def test_training_saves_a_model_that_from_pretrained_reloads(tmp_path, committed_documents):
    small = [d for d in committed_documents if d.split != "train"][:120] + [
        d for d in committed_documents if d.split == "train"
    ][:200]
    corpus.write_corpus(small, path=tmp_path / "corpus.jsonl.gz", manifest=tmp_path / "corpus.json")
    options = TrainingOptions(
        role="draft",
        device="cpu",
        seconds=60,
        epochs=(0.25, 0.5),
        batch_size=4,
        seq_len=64,
        warmup_steps=3,
        evals=2,
        corpus_path=tmp_path / "corpus.jsonl.gz",
    )
    summary = train_and_save(options, out=tmp_path / "draft", log=lambda line: None)

    saved = json.loads((tmp_path / "draft" / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(summary))
    assert [r["max_epochs"] for r in summary["runs"]] == [0.25, 0.5]
    assert all(r["stopped_by"] == "epochs" for r in summary["runs"])
    assert summary["heldout"]["perplexity"] < summary["heldout"]["perplexity_at_init"]
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "draft" / name).is_file()
    model = loading.load_model(str(tmp_path / "draft"))
    assert architecture.parameter_count(model) == summary["parameters"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_with_bf16_autocast_lowers_the_loss(committed_documents):
    data = small_data(committed_documents, tokens=50_000)
    options = TrainingOptions(role="target", batch_size=16, seq_len=128, warmup_steps=5)
    device = torch.device("cuda")
    torch.manual_seed(options.seed)
    untrained = new_model("target", data.tokenizer, device)
    before = mean_loss(untrained, data.streams["valid"], seq_len=128, device=device)
    run = train_once(options, data, max_epochs=3, seconds=60, device=device)
    assert run.best_valid_loss < before - 1.0
    assert run.loss_curve[-1]["loss"] < run.loss_curve[0]["loss"] - 1.0
