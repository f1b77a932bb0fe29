"""The flags every command shares, and turning them into a validated recipe and task.

Every number is checked here, before anything heavy is loaded: one line naming the flag and the fix.
"""

from __future__ import annotations

import argparse
from typing import Any

from quantwise.errors import UserError
from quantwise.recipes.schemes import WEIGHT_METHODS


def task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task", help="built-in task (mnist-cnn, bbc-minilm, smollm2) or path/task.py:function (default: mnist-cnn)"
    )
    p.add_argument(
        "--model",
        help="a local Hugging Face model folder (encoder or causal LM), a .gguf LLM, or a .pt model file for image folders (with --data)",
    )
    p.add_argument(
        "--data",
        help="CSV/JSONL file with text and label columns, a folder of images in class sub-folders, or (causal LM) a .txt/CSV/JSONL of text",
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--image-size", type=int, default=28, help="image folders: resize to N x N (default 28)")
    p.add_argument("--rgb", action="store_true", help="image folders: 3 colour channels (default: grayscale)")
    p.add_argument("--mean", type=float, nargs="+", help="image folders: per-channel mean to subtract (after /255)")
    p.add_argument("--std", type=float, nargs="+", help="image folders: per-channel std to divide by")
    p.add_argument("--limit", type=int, help="evaluate on the first N test examples only (quick runs)")
    p.add_argument("--threads", type=int, default=1, help="threads for inference and timing (default 1)")
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="table (default) or the JSON result record"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a separate process)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a --model file saved with torch.save(model): unpickling runs code from the file (see SECURITY.md)",
    )


def recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        help="fp16, bf16, weight-int8, weight-int4, w8a16, w4a16, dynamic-int8, static-int8, static-w4a8, mixed, "
        "fixed-point, qat-w8a8, qat-w4a8, qat-w4 (see `quantwise recipes`)",
    )
    p.add_argument("--recipe-file", help="a recipe as JSON or YAML (keys as in `quantwise recipes`)")
    p.add_argument("--calibration", help="static-int8 observer: minmax, moving-average, percentile, entropy, mse")
    p.add_argument("--percentile", type=float, help="percentile for --calibration percentile (default 99.99)")
    p.add_argument("--group-size", type=int, help="weight-only: 0 per-channel, or 16/32/64/128/256")
    p.add_argument(
        "--method",
        choices=WEIGHT_METHODS,
        help="weight-only: rtn (default), gptq, awq (activation-aware scales folded into the preceding norm) or awq-gptq",
    )
    p.add_argument(
        "--fp16-scales",
        action="store_true",
        help="weight-only: half-precision scales (with --group-size 32: exactly GGUF's Q8_0/Q4_0, runnable in llamacpp)",
    )
    p.add_argument(
        "--smoothquant",
        action="store_true",
        help="dynamic-int8/static-int8: migrate activation outliers into the weights first (SmoothQuant)",
    )
    p.add_argument("--smooth-alpha", type=float, help="--smoothquant: migration strength in (0, 1) (default: searched)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights instead of per-channel")
    p.add_argument("--symmetric-activations", action="store_true", help="static-int8: int8 symmetric activations")
    p.add_argument(
        "--activations",
        choices=("per-tensor", "per-token"),
        help="dynamic-int8: activation scales per tensor (default) or per token",
    )
    p.add_argument(
        "--float-embeddings",
        action="store_true",
        help="keep embedding tables in float (default: int8, one scale per row)",
    )
    p.add_argument(
        "--max-drop", type=float, help="mixed: budget in points of validation predictions that may change (default 0.2)"
    )
    p.add_argument(
        "--base", choices=("static-int8", "dynamic-int8"), help="mixed: the INT8 scheme for the layers it quantizes"
    )
    p.add_argument(
        "--optimize",
        choices=("latency", "size"),
        help="mixed: latency (INT8 base, sensitive layers FP32; default) or size (INT4, sensitive layers INT8)",
    )
    p.add_argument(
        "--embedding-bits", type=int, choices=(8, 4), help="weight-only: embedding tables at 8 (default) or 4 bits"
    )
    p.add_argument("--bits", type=int, choices=(8, 16), help="fixed-point: activation width (default 8)")
    p.add_argument(
        "--weight-bits",
        type=int,
        choices=(4, 8, 16),
        help="weight width: static-int8 and qat 8 or 4, fixed-point 8 or 16",
    )
    p.add_argument(
        "--epochs", type=int, help="qat: passes over the training data (default: the task's, mnist 10, bbc 1)"
    )
    p.add_argument("--steps", type=int, help="qat: optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, help="qat: learning rate (default: the task's, mnist 1e-4, bbc 2e-5)")
    p.add_argument("--lsq", action="store_true", help="qat: learn the quantization step sizes (LSQ)")
    p.add_argument("--distill", action="store_true", help="qat: knowledge distillation from the FP32 model")
    p.add_argument(
        "--distill-on",
        choices=("logits", "outputs"),
        help="qat: distil the logits through the task's head (default) or the model's own outputs (embeddings; implies --distill)",
    )
    p.add_argument("--patience", type=int, help="qat: early stop after N epochs without validation improvement")
    p.add_argument(
        "--pot-scales", action="store_true", help="fixed-point: power-of-two scales (Qm.n formats, rescaling by shifts)"
    )
    p.add_argument("--accumulator", type=int, choices=(32, 16), help="fixed-point: accumulator width (default 32)")
    p.add_argument(
        "--on-overflow",
        choices=("refuse", "saturate"),
        help="fixed-point: when the worst case overflows the accumulator, refuse (default) or saturate and count",
    )
    p.add_argument(
        "--include", action="append", default=[], help="quantize only modules matching this pattern (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", default=[], help="keep modules matching this pattern in float (repeatable)"
    )


def recipe_from_args(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from quantwise.recipes import RECIPES, get_recipe, recipe_from_text

    if args.recipe_file:
        path = Path(args.recipe_file)
        if not path.is_file():
            raise UserError(f"recipe file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"recipe file {path} is not UTF-8 text: save it as UTF-8") from None
        return recipe_from_text(text)
    if not args.recipe:
        raise UserError("quantize needs --recipe NAME or --recipe-file FILE (see `quantwise recipes`)")
    if args.recipe not in RECIPES:
        raise UserError(f"unknown recipe {args.recipe!r}: choose one of {', '.join(RECIPES)}")
    over: dict[str, Any] = {}
    for flag in ("lr", "epochs", "steps"):
        v = getattr(args, flag, None)
        if v is not None and not v > 0:
            raise UserError(f"--{flag} must be a positive number, got {v}")
    for flag, key in (
        ("calibration", "calibration"),
        ("percentile", "percentile"),
        ("group_size", "group_size"),
        ("method", "method"),
        ("max_drop", "max_drop"),
        ("base", "base"),
        ("optimize", "optimize"),
        ("embedding_bits", "embedding_bits"),
        ("bits", "bits"),
        ("weight_bits", "weight_bits"),
        ("accumulator", "accumulator"),
        ("on_overflow", "on_overflow"),
        ("epochs", "epochs"),
        ("steps", "steps"),
        ("lr", "lr"),
        ("patience", "patience"),
        ("smooth_alpha", "smooth_alpha"),
    ):
        v = getattr(args, flag)
        if v is not None:
            over[key] = v
    if args.pot_scales:
        over["pot_scales"] = True
    for flag in ("fp16_scales", "smoothquant"):
        if getattr(args, flag):
            over[flag] = True
    if args.smooth_alpha is not None:
        over["smoothquant"] = True
    for flag in ("lsq", "distill"):
        if getattr(args, flag):
            over[flag] = True
    if args.distill_on:
        over["distill"], over["distill_on"] = True, args.distill_on
    if args.per_tensor:
        over["per_channel"] = False
    if args.symmetric_activations:
        over["symmetric_activations"] = True
    if args.activations:
        over["activations"] = args.activations
    if args.float_embeddings:
        over["embeddings"] = False
    if args.include:
        over["include"] = tuple(args.include)
    if args.exclude:
        over["exclude"] = tuple(args.exclude)
    return get_recipe(args.recipe, **over)


def validate_task_args(args: argparse.Namespace) -> None:
    """Every number a command takes is checked before any work: one line naming the flag and the fix."""
    import math

    for flag, v in (
        ("limit", args.limit),
        ("threads", args.threads),
        ("image-size", args.image_size),
        ("batch", getattr(args, "batch", None)),
        ("samples", getattr(args, "samples", None)),
        ("top", getattr(args, "top", None)),
        ("explain-samples", getattr(args, "explain_samples", None)),
        ("group-size", None),
        ("patience", getattr(args, "patience", None)),
    ):
        if v is not None and v < 1:
            raise UserError(f"--{flag} must be a positive whole number, got {v}")
    if args.threads > 1024:
        raise UserError(
            f"--threads {args.threads} is more threads than any machine here has: use at most the core count"
        )
    for flag in ("mean", "std"):
        vals = getattr(args, flag) or []
        if any(not math.isfinite(v) for v in vals):
            raise UserError(f"--{flag} values must be finite numbers, got {vals}")
        if len(vals) not in (0, 1, 3 if args.rgb else 1):
            raise UserError(f"--{flag} takes one value or one per channel ({3 if args.rgb else 1}), got {len(vals)}")
    if any(v <= 0 for v in (args.std or [])):
        raise UserError(f"--std values must be positive, got {args.std}")
    for flag in ("lr", "percentile", "max_drop"):
        v = getattr(args, flag, None)
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"--{flag.replace('_', '-')} must be a finite number, got {v}")


def load_task_from_args(args: argparse.Namespace) -> Any:
    from quantwise.tasks import load_task

    validate_task_args(args)
    return load_task(
        args.task,
        model=args.model,
        data=args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        limit=args.limit,
        image_size=args.image_size,
        grayscale=not args.rgb,
        mean=args.mean,
        std=args.std,
        trust_pickle=args.trust_pickle,
    )
