"""Texts for an ONNX text model: a CSV/JSONL tokenized with the tokenizer saved beside the file.

The tokenizer is the one in the ``.onnx`` file's folder (``tokenizer.json`` or
``tokenizer_config.json``: what optimum's export and ``save_pretrained`` write). Every text is
truncated to the tokenizer's length (at most 512 tokens) and padded to the longest, so the
examples stack; the graph's inputs are filled by name from the tokenizer's output
(``input_ids``, ``attention_mask``, ``token_type_ids``; token types default to zeros). Labels are
optional: class indices, or names found in ``id2label`` of a ``config.json`` beside the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantwise.errors import UserError
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.tasks.hf_classifier import class_indices
from quantwise.tasks.text import read_table

MAX_TOKENS = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _tokenizer(model: Path):  # type: ignore[no-untyped-def]
    folder = model.parent
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"--data is text but {folder} has no tokenizer (tokenizer.json): save it beside {model.name} "
            "(tokenizer.save_pretrained(folder)) or give a .npz of arrays keyed by input name"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise UserError(f"the tokenizer beside {model.name} does not load: {str(e).splitlines()[0][:200]}") from None


def _labels(raw: list[str], folder: Path, source: Path) -> np.ndarray:
    """Class indices of the model's output: names through ``id2label`` of a ``config.json`` beside
    the file (or indices), as a Hugging Face folder's labels are read; without one, indices."""
    cfg = folder / "config.json"
    if cfg.is_file():
        id2label = {int(k): str(v) for k, v in json.loads(cfg.read_text()).get("id2label", {}).items()}
        if id2label:
            return class_indices(raw, id2label, str(source))
    try:
        return np.array([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        raise UserError(
            f"{source}: label {next(v for v in raw if not v.lstrip('-').isdigit())!r} is not a class index of the "
            "model's output and no config.json with id2label lies beside it: give the output index (0, 1, ...) per row"
        ) from None


def tokenized_arrays(
    model: Path, data: Path, gm: OnnxGraphModule, text_column: str, label_column: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``{graph input: array}`` from the texts of ``data``, and its labels if the file has them."""
    rows = read_table(data)
    if text_column not in rows[0]:
        raise UserError(f"{data} has no column {text_column!r} (columns: {', '.join(rows[0])}): pass --text-column")
    texts = [str(r.get(text_column) or "") for r in rows]
    tok = _tokenizer(model)
    longest = min(int(getattr(tok, "model_max_length", MAX_TOKENS) or MAX_TOKENS), MAX_TOKENS)
    enc = tok(texts, truncation=True, max_length=longest, padding="longest", return_tensors="np")
    arrays: dict[str, np.ndarray] = {}
    for name in gm.input_names:
        if name in enc:
            arrays[name] = np.asarray(enc[name])
        elif name == "token_type_ids":
            arrays[name] = np.zeros_like(np.asarray(enc["input_ids"]))
        else:
            raise UserError(
                f"the ONNX model's input {name!r} is not something its tokenizer gives ({', '.join(enc)}): "
                "give a .npz of arrays keyed by input name"
            )
    labels = None
    if label_column in rows[0] and all(r.get(label_column) not in (None, "") for r in rows):
        labels = _labels([str(r[label_column]) for r in rows], model.parent, data)
    return arrays, labels
