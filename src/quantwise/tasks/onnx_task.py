"""An ONNX file and the user's arrays as a task: inputs matched to the graph's signature by name.

Data: a ``.npz`` with one array per graph input (keyed by the input's name) and optionally
``labels``, a ``.npy`` for a one-input graph, or for a text model a CSV/JSONL of texts tokenized
with the tokenizer saved beside the ``.onnx`` (``onnx_text``). Examples lie along each input's batch axis: the
axis whose symbolic name matches the first input's first symbolic dimension (axis 0 when the
graph names none); an input without it (a scalar such as a sample rate) is passed whole to
every batch. A fixed split (``default_rng(0)`` permutation): the first quarter, at most 128
examples, calibrates, validates mixed precision's search and trains the QAT formats (which run
on the graph imported into PyTorch); the rest is the test set, which nothing trains or searches on.

Metrics compare each format's scored output (the first float tensor output) with the FP32 graph's on the same examples: mean
cosine similarity (per example; over the test set's column for a one-number output), SQNR, top-1
agreement and KL of the softmax (outputs with several columns; ``output > 0.5`` agreement for one);
with labels, also accuracy and macro F1 (argmax, or ``output > 0.5`` for one column), the budget
metric. Without labels the budget is on the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantwise.errors import UserError
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.tasks.base import CLASSIFICATION_METRICS, MetricSpec, Task, classification_metrics

LABEL_KEYS = ("labels", "label")
MAX_CALIBRATION = 128
BATCH = 32
OUTPUT_METRICS = (
    MetricSpec("cosine", per_example="cosine"),
    MetricSpec("agreement"),
    MetricSpec("sqnr_db", fraction=False),
    MetricSpec("kl", higher_is_better=False, fraction=False),
)


def read_arrays(data: str | Path, gm: OnnxGraphModule) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays of a ``.npz``/``.npy`` file by graph input name, and the labels if given."""
    p = Path(data)
    if not p.is_file():
        raise UserError(
            f"data file {p} does not exist: give a .npz with one array per model input ({', '.join(gm.input_names)})"
        )
    try:
        if p.suffix == ".npy":
            if len(gm.input_names) != 1:
                raise UserError(
                    f"{p} holds one array but the model has {len(gm.input_names)} inputs "
                    f"({', '.join(gm.input_names)}): save them in a .npz keyed by input name"
                )
            return {gm.input_names[0]: np.load(p, allow_pickle=False)}, None
        if p.suffix != ".npz":
            raise UserError(f"--data {p} for an ONNX model must be a .npz (arrays keyed by input name) or a .npy")
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except UserError:
        raise
    except Exception as e:  # numpy raises several types for a damaged archive
        raise UserError(
            f"{p} cannot be read as numpy arrays ({type(e).__name__}): save it again with numpy.savez"
        ) from None
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays and k not in gm.input_names), None)
    missing = [n for n in gm.input_names if n not in arrays]
    if missing:
        sig = ", ".join(f"{n} {gm.input_dims(n)}" for n in missing)
        raise UserError(
            f"{p} has no array for model input(s) {sig}: it has {', '.join(arrays) or 'none'}; key arrays by input name"
        )
    extra = [k for k in arrays if k not in gm.input_names]
    if extra:
        raise UserError(
            f"{p} has arrays {', '.join(extra)} that are no input of the model ({', '.join(gm.input_names)}) nor 'labels': rename or drop them"
        )
    return arrays, labels


def batch_axes(gm: OnnxGraphModule, arrays: dict[str, np.ndarray]) -> dict[str, int | None]:
    """Each input's batch axis (None: passed whole), from the graph's symbolic dimension names."""
    first = gm.input_dims(gm.input_names[0])
    symbol = next((d for d in first if isinstance(d, str) and d), None)
    axes: dict[str, int | None] = {}
    for n in gm.input_names:
        dims = gm.input_dims(n)
        if symbol is not None:
            axes[n] = dims.index(symbol) if symbol in dims else None
        else:
            axes[n] = 0 if arrays[n].ndim and (not dims or dims[0] in (0, "")) else None
    if axes[gm.input_names[0]] is None:
        axes[gm.input_names[0]] = 0
    return axes


def _check_shapes(gm: OnnxGraphModule, arrays: dict[str, np.ndarray]) -> None:
    for n, a in arrays.items():
        dims = gm.input_dims(n)
        if dims and len(dims) != a.ndim:
            raise UserError(
                f"input {n}: the model takes {len(dims)}-D {dims}, the data has shape {list(a.shape)}: reshape it"
            )
        for i, (d, s) in enumerate(zip(dims, a.shape)):
            if isinstance(d, int) and d > 0 and d != s:
                raise UserError(f"input {n}: dimension {i} must be {d} (model signature {dims}), the data has {s}")


def per_example_cosine(ref: np.ndarray, out: np.ndarray) -> dict[str, list[float]]:
    """Each example's cosine to FP32 (its mean is the ``cosine`` metric); nothing for one-number
    outputs, whose cosine is taken over the whole test set's column."""
    r = ref.reshape(len(ref), -1).astype(np.float64)
    o = out.reshape(len(out), -1).astype(np.float64)
    if r.shape[1] == 1:
        return {}
    cos = (r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30)
    return {"cosine": cos.tolist()}


def _output_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    r = ref.reshape(len(ref), -1).astype(np.float64)
    o = out.reshape(len(out), -1).astype(np.float64)
    if r.shape[1] == 1:  # one number per example: the cosine of the whole test set's column
        r, o = r.T, o.T
    cos = (r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30)
    r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    err = float(((r - o) ** 2).sum())
    m = {
        "cosine": float(cos.mean()),
        "sqnr_db": float(10 * np.log10(float((r**2).sum()) / err)) if err > 0 else float("inf"),
    }
    if r.shape[1] > 1:
        m["agreement"] = float((r.argmax(1) == o.argmax(1)).mean())
        lp = r - r.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = o - o.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        m["kl"] = float((np.exp(lp) * (lp - lq)).sum(1).mean())
    else:
        m["agreement"] = float(((r[:, 0] > 0.5) == (o[:, 0] > 0.5)).mean())
    return m


def _probability_head(ref: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For a graph whose scored output is already a softmax (rows of non-negative numbers that sum
    to 1, as a Keras classifier's are), the log-probabilities: QAT's cross-entropy and distillation
    take logits. None for an output of logits or scores."""
    r = ref.reshape(len(ref), -1)
    if r.shape[1] < 2 or r.min() < 0 or not np.allclose(r.sum(1), 1.0, atol=1e-4):
        return None
    return lambda p: torch.log(p.clamp_min(1e-12))


def predict(out: np.ndarray) -> np.ndarray:
    o = out.reshape(len(out), -1)
    return o.argmax(1) if o.shape[1] > 1 else (o[:, 0] > 0.5).astype(np.int64)


def onnx_task(
    model: str | Path,
    arrays: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    name: str | None = None,
    limit: int | None = None,
    score: Callable[[np.ndarray], dict[str, Any]] | None = None,
    metrics: tuple[MetricSpec, ...] | None = None,
    primary_metric: str | None = None,
) -> Task:
    """A task for an ONNX file and its inputs (``{input name: array}``); ``score`` replaces the
    built-in metrics (it gets the concatenated scored outputs of the test set)."""
    gm = OnnxGraphModule(model)
    if gm.scored is None:
        zipmap = any(n.op_type == "ZipMap" for n in gm.proto.graph.node)
        raise UserError(
            f"{Path(model).name} has no float tensor output to score ({', '.join(gm.output_names)})"
            + (
                ": its probabilities are a ZipMap (scikit-learn's default); convert with "
                "options={id(model): {'zipmap': False}}"
                if zipmap
                else ": export the model's scores or probabilities as an output"
            )
        )
    _check_shapes(gm, arrays)
    axes = batch_axes(gm, arrays)
    first = gm.input_names[0]
    n = arrays[first].shape[axes[first] or 0]
    for k, ax in axes.items():
        if ax is not None and arrays[k].shape[ax] != n:
            raise UserError(
                f"input {k} has {arrays[k].shape[ax]} examples along axis {ax}, input {first} has {n}: give the same number"
            )
    if labels is not None and len(labels) != n:
        raise UserError(f"labels has {len(labels)} entries for {n} examples: give one label per example")
    if limit:
        n = min(n, limit)
    if n < 2:
        raise UserError(f"the data has {n} example(s): give at least 2 (some calibrate, the rest test)")
    perm = np.random.default_rng(0).permutation(n)
    n_cal = min(MAX_CALIBRATION, max(1, n // 4))
    cal_idx, test_idx = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    # np.require keeps a 0-d input (a scalar such as a sample rate) 0-d; ascontiguousarray would make it 1-d
    typed = {k: np.require(v.astype(gm.input_dtype(k), copy=False), requirements="C") for k, v in arrays.items()}

    def take(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.from_numpy(
                np.ascontiguousarray(np.take(typed[k], idx, axis=axes[k])) if axes[k] is not None else typed[k]
            )
            for k in gm.input_names
        )

    def batches(idx: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
        return [take(idx[i : i + BATCH]) for i in range(0, len(idx), BATCH)]

    calibration, eval_batches = batches(cal_idx), batches(test_idx)
    try:
        ref = np.concatenate([gm(*b).numpy() for b in eval_batches])
    except UserError:
        raise
    except Exception as e:  # ORT's own message says which input or shape was wrong
        raise UserError(f"the data does not fit the ONNX model: {str(e).splitlines()[0][:300]}") from None
    test_labels = None if labels is None else np.asarray(labels)[:n][test_idx].astype(np.int64)
    cal_labels = None if labels is None else torch.from_numpy(np.asarray(labels)[:n][cal_idx].astype(np.int64))
    n_classes = int(max(test_labels.max() + 1, ref.reshape(len(ref), -1).shape[1])) if test_labels is not None else 0

    def builtin_score(out: np.ndarray) -> dict[str, Any]:
        m: dict[str, Any] = _output_metrics(ref, out)
        if test_labels is not None:
            m.update(classification_metrics(test_labels, predict(out), max(n_classes, 2)))
        return m

    def latency_input(bs: int) -> tuple[torch.Tensor, ...]:
        return take(np.resize(test_idx, bs))

    val_labels = [] if cal_labels is None else list(torch.split(cal_labels, BATCH))

    if metrics is None:
        metrics = (CLASSIFICATION_METRICS + OUTPUT_METRICS) if test_labels is not None else OUTPUT_METRICS
    return Task(
        name=name or Path(model).stem,
        model=gm,
        calibration=calibration,
        eval_batches=eval_batches,
        score=score or builtin_score,
        input_names=gm.input_names,
        dynamic_axes={},
        latency_input=latency_input,
        build_model=lambda: OnnxGraphModule(model),
        labels=test_labels,
        # mixed precision's search validates on the calibration split, and QAT trains on it
        # (on its labels, or distilling from the FP32 graph without them): never on the test set
        validation=calibration,
        val_labels=val_labels,
        train_batches=calibration,
        train_labels=val_labels,
        head=_probability_head(ref),
        # without labels QAT distils; the metrics are then cosine/SQNR of the outputs, so it matches those
        train_defaults={} if cal_labels is not None else {"distill_on": "outputs"},
        primary_metric=primary_metric or ("accuracy" if test_labels is not None else "cosine"),
        output_names=gm.output_names,
        info={
            "kind": "onnx-graph",
            "source": str(model),
            "split": f"{len(cal_idx)} calibration (also QAT training and mixed-precision validation) / "
            f"{len(test_idx)} test examples (default_rng(0) permutation)",
        },
        predict=predict,
        metrics=metrics,
        per_example=(lambda out: per_example_cosine(ref, out)) if score is None else None,
    )


def image_arrays(
    gm: OnnxGraphModule, root: Path, size: int, mean: list[float] | None, std: list[float] | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A one-input image model's input from class sub-folders: the graph's own channels (1 or 3),
    layout (NCHW or NHWC) and height/width (``size`` where they are symbolic), scaled to [0, 1],
    then ``(x - mean) / std``. Labels: the sorted folder names' indices."""
    from quantwise.tasks.images import read_images

    if len(gm.input_names) != 1:
        raise UserError(
            f"an image folder feeds a one-input model; this one has {len(gm.input_names)} "
            f"({', '.join(gm.input_names)}): give a .npz of arrays keyed by input name"
        )
    name = gm.input_names[0]
    dims = gm.input_dims(name)
    if len(dims) != 4 or not ({dims[1], dims[3]} & {1, 3}):
        raise UserError(
            f"input {name} has dims {dims}, not an image batch (N, C, H, W) or (N, H, W, C) with 1 or 3 channels: "
            "give a .npz of arrays keyed by input name"
        )
    nhwc = dims[1] not in (1, 3)
    c, hw = (dims[3], dims[1:3]) if nhwc else (dims[1], dims[2:4])
    fixed = [d for d in hw if isinstance(d, int) and d > 0]
    if len(set(fixed)) > 1:
        raise UserError(f"input {name} is {hw[0]}x{hw[1]}: image folders are resized to squares; give a .npz")
    x, y, _ = read_images(root, fixed[0] if fixed else size, c == 1, mean or [0.0], std or [1.0])
    return {name: x.transpose(0, 2, 3, 1) if nhwc else x}, y


def build_onnx_task(
    model: str,
    data: str,
    limit: int | None = None,
    text_column: str = "text",
    label_column: str = "label",
    image_size: int = 28,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> Task:
    """``--model model.onnx --data arrays.npz``; ``--data texts.csv|.jsonl`` for a text model whose
    tokenizer files lie beside the ``.onnx`` (as optimum's export and ``save_pretrained`` put them);
    ``--data IMAGE_DIR`` (class sub-folders) for a one-input image model."""
    gm = OnnxGraphModule(model)
    labels: np.ndarray | None
    if Path(data).is_dir():
        arrays, labels = image_arrays(gm, Path(data), image_size, mean, std)
    elif Path(data).suffix.lower() in (".csv", ".jsonl"):
        from quantwise.tasks.onnx_text import tokenized_arrays

        arrays, labels = tokenized_arrays(Path(model), Path(data), gm, text_column, label_column)
    else:
        arrays, labels = read_arrays(data, gm)
    return onnx_task(model, arrays, labels, limit=limit)
