"""``quantwise stream``: weight-only quantization of a causal LM one block at a time, for models
larger than memory (``pipeline/streaming.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantwise.cli.recipe_flags import recipe_args, recipe_from_args


def add_stream_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="quantize a causal LM block by block from its safetensors shards (weight-only RTN, GPTQ or AWQ), "
        "for models larger than memory",
    )
    p.add_argument("--model", required=True, help="a Hugging Face causal-LM folder with safetensors weights")
    p.add_argument(
        "--data", help="text to calibrate GPTQ or AWQ on (.txt with blank-line-separated documents, .csv, .jsonl)"
    )
    p.add_argument("--text-column", default="text", help="the text column of a CSV/JSONL --data (default text)")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="tokens per calibration window (default 512, or the model's positions if fewer)",
    )
    p.add_argument("--windows", type=int, default=8, help="calibration windows (default 8)")
    recipe_args(p)
    p.add_argument("--out", required=True, help="a new folder for the quantized blocks and quantwise-streamed.json")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier quantwise output")


def cmd_stream(args: argparse.Namespace) -> int:
    from quantwise.errors import UserError
    from quantwise.outdir import check_out

    if not args.recipe and not args.recipe_file:
        args.recipe = "weight-int4"
    recipe = recipe_from_args(args)
    if (args.window is not None and args.window < 2) or args.windows < 1:
        raise UserError("--window must be at least 2 and --windows at least 1")
    check_out(args.out, args.overwrite)
    folder = Path(args.model)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: stream takes a Hugging Face causal-LM folder")
    calib = []
    method = getattr(recipe, "method", "")
    if method in ("gptq", "awq"):
        if not args.data:
            raise UserError(f"{method.upper()} calibrates on text: pass --data (or --method rtn, which needs none)")
        calib = _windows(folder, Path(args.data), args.text_column, args.window, args.windows)
    from quantwise.pipeline.streaming import stream_quantize

    m = stream_quantize(folder, recipe, calib, args.out, args.overwrite)
    gib = 1 / 2**30
    print(
        f"wrote {args.out}: {len(m['layers'])} quantized layers, {m['blocks']}, {m['seconds']} s; "
        f"checkpoint {m['checkpoint_bytes'] * gib:.2f} GiB, peak resident memory {m['peak_rss_bytes'] * gib:.2f} GiB"
    )
    return 0


DEFAULT_WINDOW = 512


def _windows(folder: Path, data: Path, column: str, window: int | None, n: int) -> list:
    from transformers import AutoConfig, AutoTokenizer

    from quantwise.errors import UserError
    from quantwise.quiet import env_vars, hf_quiet
    from quantwise.tasks.llm import token_windows
    from quantwise.tasks.llm_load import read_texts

    docs = read_texts(data, column)
    try:
        with env_vars(HF_HUB_OFFLINE="1"), hf_quiet():
            tok = AutoTokenizer.from_pretrained(str(folder))
            positions = getattr(AutoConfig.from_pretrained(str(folder)), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {folder}: {(str(e).splitlines() or [''])[0]}") from None
    if window is None:
        window = min(DEFAULT_WINDOW, int(positions or DEFAULT_WINDOW))
    elif positions and window > int(positions):
        raise UserError(
            f"--window {window} is longer than the model's {positions} positions: give --window {positions} or less"
        )
    wins = token_windows(tok, docs, window, n)
    if not wins:
        raise UserError(f"{data} has fewer than {window} tokens: give more text or a smaller --window")
    return [(w,) for w in wins]
