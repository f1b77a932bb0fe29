"""The built-in QAT training loop.

Adam with a 5% linear warm-up then cosine decay; cross-entropy on the task's labels through its
head, knowledge distillation from the FP32 model (``distill``; alone when there are no labels);
a progress bar with the loss and the validation accuracy; a checkpoint after every epoch
(written to a temporary file, then renamed) that a later run resumes from; early stop on the
validation accuracy; and, on a NaN or infinite loss, a stop that keeps the last good checkpoint
and says so. The best validated state is the one returned.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.cachedir import cache_dir
from quantwise.errors import UserError
from quantwise.progress import live_progress, status, warn
from quantwise.transform.qat import QATPrepared

Batch = tuple[torch.Tensor, ...]
TEMPERATURE = 2.0


@dataclass
class TrainData:
    """What the loop trains on: input batches, their labels (may be empty), a validation split."""

    batches: Sequence[Batch]
    labels: Sequence[torch.Tensor]
    val_batches: Sequence[Batch]
    val_labels: Sequence[torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_val_accuracy: float | None = None
    stopped: str = ""
    resumed_from_step: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "best_val_accuracy": self.best_val_accuracy,
            "stopped": self.stopped,
            "resumed_from_step": self.resumed_from_step,
            "history": self.history,
        }


def task_train_data(task: Any) -> TrainData:
    """The task's training data; without a separate validation set, the last 10% of batches validate."""
    batches, labels = list(task.train_batches), list(task.train_labels)
    if not batches:
        raise UserError(
            f"task {task.name} has no training data: QAT needs training batches (a task with train_batches)"
        )
    if labels and len(labels) != len(batches):
        raise UserError(f"task {task.name}: {len(batches)} training batches but {len(labels)} label batches")
    if task.val_labels:
        return TrainData(batches, labels, list(task.validation), list(task.val_labels), task.head)
    n_val = max(1, len(batches) // 10) if len(batches) > 1 and labels else 0
    cut = len(batches) - n_val
    return TrainData(batches[:cut], labels[:cut], batches[cut:], labels[cut:] if labels else [], task.head)


def _logits(out: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    return head(out) if head is not None else out


def _validate(model: nn.Module, data: TrainData) -> tuple[float, float] | None:
    """Validation accuracy and mean cross-entropy (the tie-breaker when accuracy saturates)."""
    if not data.val_batches or not data.val_labels:
        return None
    model.eval()
    right = total = 0
    loss = 0.0
    with torch.no_grad():
        for b, y in zip(data.val_batches, data.val_labels):
            logits = _logits(model(*b), data.head)
            right += int((logits.argmax(-1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            total += len(y)
    model.train()
    return right / max(total, 1), loss / max(total, 1)


def _schedule(total: int) -> Callable[[int], float]:
    warm = max(1, int(0.05 * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return f


def checkpoint_dir_for(task: Any, prepared: QATPrepared, root: Path | None = None) -> Path:
    """A folder unique to this task, model and recipe, under ``$QUANTWISE_CACHE/qat`` by default."""
    h = hashlib.sha1(json.dumps(prepared.recipe.to_dict(), sort_keys=True).encode())
    h.update(f"{task.name} labels {len(task.train_labels)}".encode())  # labelled and unlabelled runs differ
    for name, p in task.model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()) if p.is_floating_point() else 0}".encode())
    base = root or cache_dir("qat")
    return base / f"{task.name.replace('/', '_').replace(':', '_')}-{prepared.recipe.name}-{h.hexdigest()[:12]}"


def train_qat(
    prepared: QATPrepared,
    data: TrainData,
    teacher: nn.Module | None,
    epochs: int,
    steps: int,
    lr: float,
    checkpoint_dir: Path | None = None,
    patience: int = 0,
    distill_on: str = "logits",
    seed: int = 0,
) -> TrainResult:
    """Train ``prepared.model`` in place; returns what happened. Resumes from ``checkpoint_dir`` if it holds a run.

    ``distill_on``: with a ``teacher``, match its ``logits`` (through ``data.head``) or its raw ``outputs``.
    """
    recipe = prepared.recipe
    if not data.labels and teacher is None:
        raise UserError("the training data has no labels: use --distill to learn from the FP32 model instead")
    if distill_on not in ("logits", "outputs"):
        raise UserError(f"distill_on must be logits or outputs, got {distill_on!r}")
    if lr <= 0 or not math.isfinite(lr):
        raise UserError(f"the learning rate must be a positive number, got {lr}")
    per_epoch = len(data.batches)
    total = steps if steps > 0 else epochs * per_epoch
    if total <= 0:
        raise UserError(f"the number of training steps must be positive (epochs {epochs}, steps {steps})")
    model = prepared.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters: quantization-aware training needs parameters to train")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total))
    res = TrainResult()
    state = {"step": 0, "best": -1.0, "best_loss": math.inf, "best_model": None, "since_best": 0}
    ckpt = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
    saved = _load_checkpoint(ckpt) if ckpt is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state.update(saved["state"])
        res.history = saved["history"]
        res.resumed_from_step = state["step"]
        status(f"QAT: resuming from {ckpt} at step {state['step']} of {total}")
    last_good, good_step = copy.deepcopy(model.state_dict()), state["step"]
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    model.train()
    with live_progress() as progress:
        bar = progress.add_task(f"QAT {recipe.name}", total=total, completed=state["step"])
        while state["step"] < total:
            epoch = state["step"] // per_epoch
            order = torch.randperm(per_epoch, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            losses = []
            for i in order[state["step"] % per_epoch :]:
                prepared.set_step(state["step"])
                loss = _loss(model, data, teacher, i, distill_on)
                if not torch.isfinite(loss):
                    model.load_state_dict(last_good)
                    res.stopped = (
                        f"loss became {float(loss.detach())} at step {state['step']}: stopped and kept the last good "
                        f"checkpoint (step {good_step})"
                    )
                    status(f"QAT: {res.stopped}")
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                state["step"] += 1
                losses.append(float(loss.detach()))
                progress.update(
                    bar, advance=1, description=f"QAT {recipe.name} · epoch {epoch + 1} · loss {losses[-1]:.4f}"
                )
                if state["step"] >= total:
                    break
            if res.stopped:
                break
            v = _validate(model, data)
            val = v[0] if v else None
            res.history.append(
                {
                    "epoch": epoch + 1,
                    "step": state["step"],
                    "loss": sum(losses) / max(len(losses), 1),
                    "val_accuracy": val,
                    "val_loss": v[1] if v else None,
                }
            )
            progress.update(
                bar,
                description=f"QAT {recipe.name} · epoch {epoch + 1} · loss {res.history[-1]['loss']:.4f}"
                + (f" · val {100 * val:.2f}%" if val is not None else ""),
            )
            if v is not None and (v[0], -v[1]) > (state["best"], -state["best_loss"]):
                state["best"], state["best_loss"] = v
                state["best_model"], state["since_best"] = copy.deepcopy(model.state_dict()), 0
            elif v is not None:
                state["since_best"] += 1
            last_good, good_step = copy.deepcopy(model.state_dict()), state["step"]
            if ckpt is not None:
                _save(ckpt, model, opt, sched, state, res.history)
            if patience and state["since_best"] >= patience:
                res.stopped = f"early stop: validation accuracy (then loss) did not improve for {patience} epochs"
                break
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    model.eval()
    res.steps, res.seconds = state["step"], time.perf_counter() - t0
    res.best_val_accuracy = state["best"] if state["best"] >= 0 else None
    return res


def _loss(
    model: nn.Module, data: TrainData, teacher: nn.Module | None, i: int, distill_on: str = "logits"
) -> torch.Tensor:
    batch = data.batches[i]
    out = model(*batch)
    parts = []
    if data.labels:
        parts.append(F.cross_entropy(_logits(out, data.head), data.labels[i]))
    if teacher is not None:
        with torch.no_grad():
            t = teacher(*batch)
        if distill_on == "outputs":  # the outputs themselves (e.g. embeddings), scale-free
            parts.append(F.mse_loss(out, t) / t.pow(2).mean().clamp_min(1e-12))
        else:
            logits, t = _logits(out, data.head), _logits(t, data.head)
            kd = F.kl_div(
                F.log_softmax(logits / TEMPERATURE, -1), F.softmax(t / TEMPERATURE, -1), reduction="batchmean"
            )
            parts.append(kd * TEMPERATURE**2)
    return sum(parts) / len(parts)


def _save(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, state: dict[str, Any], history: list
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": state,
            "history": history,
        },
        tmp,
    )
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    _sidecar(path).write_text(json.dumps({"sha256": digest}))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint quantwise wrote, or None (absent, or refused with a warning naming it).

    Read without running code (``weights_only=True``: tensors and plain containers only), and
    only when its SHA-256 matches the one written beside it; anything else is discarded and
    training starts again.
    """
    if not path.exists():
        return None
    try:
        want = json.loads(_sidecar(path).read_text())["sha256"]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != want:
            raise ValueError("its content hash does not match the one quantwise wrote")
        saved = torch.load(io.BytesIO(data), weights_only=True)  # the bytes whose hash was checked
        if not isinstance(saved, dict) or not {"model", "optimizer", "scheduler", "state", "history"} <= set(saved):
            raise ValueError("it is not a quantwise QAT checkpoint")
        return saved
    except Exception as e:
        warn(
            f"ignoring the QAT checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "training from the start"
        )
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        return None
