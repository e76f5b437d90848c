"""The offline text the trained presets learn from: the Python standard library's docstrings, comments and source,
the pinned dependencies' docstrings and comments, and Python's documentation (train.py's docstring says how each
preset uses them), and the held-out text (`pydoc_data.topics`, validate's) kept out of them."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import platform
import re
import sysconfig
import tokenize
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .config import PRESETS
from .errors import BonsaiError
from .rst_text import docs_files, rst_sections

log = logging.getLogger(__name__)


def stdlib_docstrings(min_chars: int = 80) -> list[str]:
    """Docstrings of the standard library, in a fixed order (sorted files, AST walk order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "pydoc_data", "idlelib", "lib2to3"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    docs.append(doc)
    return docs


SMALL_PACKAGES = ("torch", "transformers", "executorch", "onnx", "onnxruntime", "onnxscript", "huggingface_hub",
                  "mistral_common", "safetensors", "tokenizers")
SKIP_DIRS = frozenset({"site-packages", "test", "tests", "pydoc_data", "idlelib", "lib2to3"})
MIN_CHARS = 80
NGRAM = 13  # a training document sharing this many consecutive words with the held-out text is dropped
VAL_EVERY = 100  # every 100th document is the validation split
DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _source_texts(path: str) -> tuple[list[str], list[str], str]:
    """Docstrings and comment blocks (consecutive `#` lines) of one Python file, each at least MIN_CHARS long, and
    the whole source ("" when it does not parse)."""
    try:
        src = Path(path).read_text(encoding="utf-8")
        tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return [], [], ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, DOC_NODES):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                docs.append(doc)
    comments, block, last = [], [], -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type != tokenize.COMMENT:
                continue
            if block and tok.start[0] != last + 1:
                comments.append("\n".join(block))
                block = []
            text = tok.string.lstrip("#").strip()
            if text:
                block.append(text)
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        pass
    if block:
        comments.append("\n".join(block))
    return docs, [c for c in comments if len(c) >= MIN_CHARS], src


def _py_files(root: Path) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*.py")) if not SKIP_DIRS & set(p.relative_to(root).parts)]


def _package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BonsaiError(f"{name}: not installed; the trained-small corpus reads its sources (pip install .)")
    return Path(list(spec.submodule_search_locations)[0])


def _python_xy() -> str:
    return ".".join(platform.python_version_tuple()[:2])


def python_docs_root() -> Path:
    """Where Debian's python3.X-doc package puts the documentation's reStructuredText sources."""
    return Path(f"/usr/share/doc/python{_python_xy()}/html/_sources")


def docs_sections(root: Path, files: list[Path] | None = None) -> list[str]:
    """Python's documentation, section by section (rst_text), in sorted file order (`files`: docs_files(root),
    when the caller has it already)."""
    files = docs_files(root) if files is None else files
    if not files:
        raise BonsaiError(f"{root}: no reStructuredText files; install Python's documentation sources (Debian: "
                          f"apt-get install python{_python_xy()}-doc) or pass --docs with Python's Doc/ folder")
    return [s for f in files for s in rst_sections(f.read_text(encoding="utf-8")) if len(s) >= MIN_CHARS]


def word_ngrams(text: str, n: int = NGRAM):
    words = re.findall(r"\w+", text.lower())
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def without_held_out(docs: list[tuple[str, str]], held_out: str) -> list[tuple[str, str]]:
    """The (group, text) documents that share no NGRAM-word sequence with the held-out text."""
    held = set(word_ngrams(held_out))
    return [(g, d) for g, d in docs if not any(gram in held for gram in word_ngrams(d))]


def corpus_documents(held_out: str, workers: int | None = None, packages: tuple[str, ...] = SMALL_PACKAGES,
                     docs_root: Path | None = None) -> tuple[dict[str, list[str]], dict]:
    """The trained-small text: {"stdlib", "code", "packages", "docs", "val"} documents and a description. stdlib
    and packages: docstrings and comment blocks; code: the standard library's source files, whole; docs: the
    sections of Python's documentation under docs_root (none when None).

    Sources in a fixed order (sorted files; per file its docstrings in AST walk order, then its comment blocks);
    exact duplicates dropped (first kept), then every document sharing a NGRAM-word sequence with `held_out`."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))] + [(n, _package_root(n)) for n in packages]
    jobs = [(group, f) for group, root in roots for f in _py_files(root)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        texts = list(pool.map(_source_texts, [f for _, f in jobs], chunksize=32))
    seen, docs = set(), []
    for (group, _), (file_docs, file_comments, source) in zip(jobs, texts):
        for doc in file_docs + file_comments:
            if doc not in seen:
                seen.add(doc)
                docs.append(("stdlib" if group == "stdlib" else "packages", doc))
        if group == "stdlib" and source and source not in seen:
            seen.add(source)
            docs.append(("code", source))
    doc_files = docs_files(docs_root) if docs_root else []
    for section in docs_sections(docs_root, doc_files) if docs_root else []:
        if section not in seen:
            seen.add(section)
            docs.append(("docs", section))
    kept = without_held_out(docs, held_out)
    out = {"stdlib": [], "code": [], "packages": [], "docs": [], "val": []}
    for i, (group, doc) in enumerate(kept):
        out["val" if i % VAL_EVERY == VAL_EVERY - 1 else group].append(doc)
    versions = {n: importlib.metadata.version(n.replace("_", "-")) for n in packages}
    info = {"python": platform.python_version(), "packages": versions, "files": len(jobs),
            "docs_files": len(doc_files),
            "documents": len(docs), "dropped_overlapping_held_out": len(docs) - len(kept),
            **{f"{k}_documents": len(v) for k, v in out.items()}}
    return out, info


def corpus_tokens(workers: int | None = None, packages: tuple[str, ...] = SMALL_PACKAGES,
                  docs_root: Path | None = None) -> dict:
    """Token streams (each document BOS-prefixed, concatenated) of corpus_documents()'s groups, and the held-out
    text as `validate` encodes it; train_stream() mixes them into the training stream."""
    import sentencepiece as spm

    from .tokenizer import mistral_v1_spm
    from .validate import held_out_text

    held_out = held_out_text(None)
    docs, info = corpus_documents(held_out, workers, packages, docs_root)
    sp, bos = spm.SentencePieceProcessor(model_file=str(mistral_v1_spm())), PRESETS["trained-small"].bos_id

    def stream(texts):
        ids = []
        for text in texts:  # as SentencePiece encodes it, after BOS (Tokenizer is transformers' pipeline now)
            ids.extend([bos, *sp.encode(text)])
        return torch.tensor(ids, dtype=torch.int16)  # vocab 32000 fits

    out = {name: stream(texts) for name, texts in docs.items()}
    out["held_out"] = stream([held_out])
    info.update({f"{name}_tokens": t.numel() for name, t in out.items()})
    info["sha256"] = hashlib.sha256(b"".join(out[k].numpy().tobytes() for k in sorted(out))).hexdigest()
    out["info"] = info
    log.info("corpus: %s", json.dumps(info))
    return out
