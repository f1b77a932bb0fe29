"""A user's image classifier on a folder of images in class sub-folders.

``--model model.pt`` is a whole ``nn.Module`` saved with ``torch.save(model)`` (loaded only with
``--trust-pickle``: unpickling runs code from the file);
``--data DIR`` holds one sub-folder per class (class index = sorted folder order). Images are
resized to ``--image-size``, scaled to [0, 1], normalised by ``--mean``/``--std``. Stratified
70/30 split (random_state=0): calibration from the first 128 training images, evaluation on
the test part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.progress import status
from quantwise.tasks.base import Task, batched, classification_metrics

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


_SAFE_SAVE = (
    "save the architecture in a task file instead (--task task.py:build returning the module with its "
    "weights loaded from a state_dict), or pass --trust-pickle if you trust the file"
)


def _exported(path: Path, trust_pickle: bool) -> nn.Module:
    """A ``torch.export.save`` program, its Conv/Linear/BatchNorm/ReLU calls lifted into modules."""
    if not trust_pickle:
        raise UserError(
            f"{path} is a torch.export program; torch.export.load unpickles its weights, which can run code from "
            "the file: pass --trust-pickle if you trust it"
        )
    from quantwise.transform.lift import load_exported

    model, info = load_exported(str(path))
    status(
        f"{path.name}: torch.export program, {len(info['lifted'])} call(s) lifted into modules, checked on "
        f"{info['checked_on']}" + (f"; left as calls: {info['left']}" if info["left"] else "")
    )
    return model


def load_model_file(path: Path, trust_pickle: bool = False) -> nn.Module:
    """A whole ``nn.Module`` saved with ``torch.save(model, path)``.

    Unpickling a module runs code from the file, so it is done only with ``trust_pickle``;
    without it the file is read with ``weights_only=True`` (no code runs) and a pickled module
    is refused with how to provide the model safely. TorchScript files are refused: quantwise
    quantizes ``nn.Module`` layers, and a scripted graph would pass through unquantized.
    """
    if path.is_dir():
        raise UserError(f"--model {path} is a folder: for images pass a model file saved with torch.save(model, path)")
    if not path.is_file():
        raise UserError(f"model file {path} not found: pass a file saved with torch.save(model, path)")
    if path.stat().st_size == 0:
        raise UserError(f"model file {path} is empty: save the model again with torch.save(model, path)")
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is an ONNX file: pass it with --data arrays.npz (one array per model input)")
    if path.suffix.lower() in (".pt2", ".ep"):
        return _exported(path, trust_pickle)
    if head[:4] == b"PK\x03\x04" and _is_torchscript(path):
        raise UserError(
            f"{path} is a TorchScript file: quantwise quantizes nn.Module layers and cannot quantize a scripted "
            "graph faithfully; save the nn.Module itself (torch.save(model, path) with --trust-pickle, or a task file), "
            "a torch.export program (torch.export.save(torch.export.export(model, example), 'model.pt2')), "
            "or export it to ONNX (torch.onnx.export) and pass the .onnx"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except (ModuleNotFoundError, AttributeError) as e:  # the pickle names a class this process cannot import
        raise UserError(
            f"{path} holds a model whose class cannot be imported here ({type(e).__name__}: {e}): put the module "
            "that defines it on PYTHONPATH, or use a task file (--task task.py:build) that builds the model"
        ) from None
    except Exception as e:
        if not trust_pickle and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # a zip archive or a raw pickle
            raise UserError(
                f"{path} is a pickled object; loading it would run code from the file: {_SAFE_SAVE}"
            ) from None
        raise UserError(f"cannot load {path}: it is not a file saved with torch.save ({type(e).__name__})") from None
    if isinstance(obj, dict):
        raise UserError(
            f"{path} holds weights only (a state_dict), not the model: quantwise needs the architecture: "
            "use a task file (--task task.py:build) that builds the module and loads these weights"
        )
    if not isinstance(obj, nn.Module):
        raise UserError(
            f"{path} holds a {type(obj).__name__}, not a model: save the module itself with torch.save(model, path)"
        )
    if isinstance(obj, torch.jit.ScriptModule):
        raise UserError(
            f"{path} holds a TorchScript module: quantwise cannot quantize a scripted graph faithfully; save the nn.Module"
        )
    return obj.eval()


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds a ``code/`` folder (torch.save archives do not)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def image_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The images under ``root/<class>/``, their class indices and the sorted class names."""
    if not root.is_dir():
        raise UserError(f"image folder {root} not found: pass a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{root} needs at least two class sub-folders, found {len(classes)}")
    files, ys = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in EXTENSIONS:
                files.append(f)
                ys.append(i)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {root}")
    return files, ys, classes


def open_image(f: Path, mode: str) -> Any:
    """A PIL image in ``mode``; an unreadable file is a :class:`UserError` naming it."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image folders need Pillow: pip install pillow") from None
    try:
        return Image.open(f).convert(mode)
    except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated files
        raise UserError(f"cannot read image {f}: {type(e).__name__}: remove or re-save the file") from None


def read_images(
    root: Path, size: int, grayscale: bool, mean: list[float], std: list[float]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N, C, size, size) float32, labels, class names)``."""
    files, ys, classes = image_files(root)
    xs = []
    for f in files:
        img = open_image(f, "L" if grayscale else "RGB").resize((size, size))
        a = np.asarray(img, dtype=np.float32) / 255.0
        xs.append(a[None] if grayscale else a.transpose(2, 0, 1))  # (C, H, W)
    x = np.stack(xs)
    c = x.shape[1]
    m = np.array(mean * c if len(mean) == 1 else mean, dtype=np.float32).reshape(1, c, 1, 1)
    s = np.array(std * c if len(std) == 1 else std, dtype=np.float32).reshape(1, c, 1, 1)
    return (x - m) / s, np.array(ys), classes


def build_image_task(
    model_path: str,
    data: str,
    size: int = 28,
    grayscale: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    limit: int | None = None,
    trust_pickle: bool = False,
) -> Task:
    from sklearn.model_selection import train_test_split

    path = Path(model_path)
    model = load_model_file(path, trust_pickle)
    x, y, classes = read_images(Path(data), size, grayscale, mean or [0.0], std or [1.0])
    try:
        tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    except ValueError as e:
        raise UserError(f"cannot split the images 70/30 by class: {e}; give at least 2 images per class") from None
    if limit:
        te = te[:limit]
    xt = torch.from_numpy(x)
    labels = y[te]
    return Task(
        name=f"images:{Path(data).name}",
        model=model,
        calibration=batched(xt[tr[:128]], 32),
        eval_batches=batched(xt[te], 256),
        score=lambda out: classification_metrics(labels, out.argmax(axis=1), len(classes)),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (xt[np.resize(te, n)],),
        build_model=lambda: load_model_file(path, trust_pickle),
        labels=labels,
        info={"classes": classes, "n_test": len(te)},
        validation=batched(xt[tr], 256),
        # QAT trains on the 70% training split (it validates on the last tenth of its batches)
        train_batches=batched(xt[tr], 32),
        train_labels=[torch.from_numpy(y[tr[i : i + 32]]) for i in range(0, len(tr), 32)],
    )
