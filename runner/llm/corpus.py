"""The training corpus: docstrings of the running interpreter's standard library, plus the
reference-manual topics it ships for `help()` (pydoc_data.topics), collected without network
and without importing anything (sources are parsed with `ast`, so no module runs).

Everything is deterministic: a sorted walk, documents in source order, exact duplicates
dropped (the first in walk order stays), and a fixed held-out split by a hash of each
document's unit (its module, or its topic), so the same interpreter gives the same bytes.
The text is CPython's, under the Python Software Foundation License Version 2.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import platform
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_PATH = DATA_DIR / "corpus.jsonl.gz"
MANIFEST_PATH = DATA_DIR / "corpus.json"

# Test suites and their fixtures are code, not documentation (and hold deliberately broken
# files); site-packages is not the standard library.
SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
# A docstring shorter than this ("Return self.") teaches the model little.
MIN_CHARS = 20
# Percent of units (modules, topics) held out: "heldout" is only ever evaluated (the
# perplexity the data card reports), "valid" picks the checkpoint during training. Chosen by
# a hash, so a unit's split never depends on what else is in the corpus.
HELDOUT_PERCENT = 8
VALID_PERCENT = 4
SPLITS = ("train", "valid", "heldout")
TOPICS_MODULE = "pydoc_data.topics"


@dataclass(frozen=True)
class Document:
    unit: str  # what the split hashes: a module name, or "pydoc_data.topics/<topic>"
    source: str  # "module:Class.method" or "pydoc_data.topics/<topic>"
    split: str  # one of SPLITS
    text: str


def split_of(unit: str) -> str:
    digest = hashlib.sha256(unit.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    if bucket < HELDOUT_PERCENT:
        return "heldout"
    return "valid" if bucket < HELDOUT_PERCENT + VALID_PERCENT else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_source_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(module name, path) for every .py file under root, in sorted order."""
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("config-")
        )
        relative = Path(folder).relative_to(root).parts
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            parts = [*relative, name[: -len(".py")]]
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                yield ".".join(parts), Path(folder) / name


def docstrings(module: str, source: bytes) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) in source order; nothing for unparsable files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}" if prefix else child.name
                text = ast.get_docstring(child, clean=True)
                if text:
                    yield f"{module}:{name}", text
                yield from visit(child, name)

    text = ast.get_docstring(tree, clean=True)
    if text:
        yield module, text
    yield from visit(tree, "")


def topics(source: bytes) -> Iterator[tuple[str, str]]:
    """The reference-manual sections behind help('if'), from the literal dict `topics`."""
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            for key, value in sorted(ast.literal_eval(node.value).items()):
                yield f"{TOPICS_MODULE}/{key}", value


def collect(root: Path | None = None) -> list[Document]:
    root = root or stdlib_root()
    seen: set[str] = set()
    documents: list[Document] = []

    def add(unit: str, source: str, text: str) -> None:
        text = "\n".join(line.rstrip() for line in text.strip().splitlines())
        if len(text) < MIN_CHARS or text in seen:
            return
        seen.add(text)
        documents.append(Document(unit=unit, source=source, split=split_of(unit), text=text))

    for module, path in iter_source_files(root):
        source = path.read_bytes()
        if module == TOPICS_MODULE:
            for name, text in topics(source):
                add(name, name, text)
            continue
        for name, text in docstrings(module, source):
            add(module, name, text)
    return documents


def serialize(documents: Iterable[Document]) -> bytes:
    lines = (json.dumps(asdict(d), ensure_ascii=False, sort_keys=True) for d in documents)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_corpus(
    documents: list[Document], *, path: Path = CORPUS_PATH, manifest: Path = MANIFEST_PATH
) -> dict:
    """Write the gzip (no timestamp or name in its header, so equal text gives equal bytes)
    and a manifest whose sha256 is of the uncompressed JSON lines."""
    raw = serialize(documents)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    summary = describe(documents, raw)
    manifest.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def describe(documents: list[Document], raw: bytes) -> dict:
    def count(split: str) -> dict:
        chosen = [d for d in documents if d.split == split]
        return {
            "documents": len(chosen),
            "units": len({d.unit for d in chosen}),
            "text_bytes": sum(len(d.text.encode("utf-8")) for d in chosen),
        }

    return {
        "format": "inference-roadmap-corpus",
        "version": 1,
        "source": "CPython standard library docstrings and pydoc_data.topics",
        "licence": "Python Software Foundation License Version 2",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "heldout_percent": HELDOUT_PERCENT,
        "valid_percent": VALID_PERCENT,
        "min_chars": MIN_CHARS,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "jsonl_bytes": len(raw),
        "splits": {split: count(split) for split in SPLITS},
    }


def corpus_sha256(path: Path = CORPUS_PATH) -> str:
    """Of the uncompressed JSON lines: the same text gives the same hash whatever gzip did."""
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


class CorpusMismatch(RuntimeError):
    pass


def verify_corpus(path: Path = CORPUS_PATH) -> None:
    """Raise if the corpus is not the one its manifest (beside it) describes."""
    manifest = path.parent / MANIFEST_PATH.name
    if not manifest.is_file():
        return
    expected = json.loads(manifest.read_text(encoding="utf-8"))["sha256"]
    actual = corpus_sha256(path)
    if actual != expected:
        raise CorpusMismatch(f"{path} has sha256 {actual}, its manifest says {expected}")


def read_corpus(path: Path = CORPUS_PATH) -> list[Document]:
    raw = gzip.decompress(path.read_bytes())
    return [Document(**json.loads(line)) for line in raw.decode("utf-8").splitlines()]


def texts(documents: Iterable[Document], split: str) -> list[str]:
    return [d.text for d in documents if d.split == split]
