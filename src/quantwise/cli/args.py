"""The flags every command shares, and turning them into a validated task (recipe flags: :mod:`.recipe_flags`).

Every number is checked here, before anything heavy is loaded: one line naming the flag and the fix.
"""

from __future__ import annotations

import argparse
from typing import Any

from quantwise.errors import UserError


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
        help="CSV/JSONL file with text and label columns, a folder of images in class sub-folders, (causal LM) a "
        ".txt/CSV/JSONL of text, or (.onnx model) a .npz of arrays by input name or CSV/JSONL texts for its tokenizer",
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
        "--score-threads",
        type=int,
        help="threads for scoring the test set in ONNX Runtime (compare: every core by default, others: --threads); "
        "timings keep --threads",
    )
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="table (default) or the JSON result record"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a separate process)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a --model file saved with torch.save(model): unpickling runs code from the file (see SECURITY.md)",
    )


def validate_task_args(args: argparse.Namespace) -> None:
    """Every number a command takes is checked before any work: one line naming the flag and the fix."""
    import math

    for flag, v in (
        ("limit", args.limit),
        ("threads", args.threads),
        ("score-threads", getattr(args, "score_threads", None)),
        ("image-size", args.image_size),
        ("batch", getattr(args, "batch", None)),
        ("samples", getattr(args, "samples", None)),
        ("top", getattr(args, "top", None)),
        ("explain-samples", getattr(args, "explain_samples", None)),
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
