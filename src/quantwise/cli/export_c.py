"""``quantwise export-c``: a fixed-point model as C99 files, checked against the integer executor."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from quantwise.cli.args import load_task_from_args, task_args
from quantwise.cli.recipe_flags import recipe_args, recipe_from_args


def add_export_c_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-c", help="export a fixed-point model as portable C99 for microcontrollers")
    task_args(p)
    recipe_args(p)
    p.add_argument("--out", required=True, help="a new folder for the C files")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier quantwise output")
    p.add_argument(
        "--check",
        type=int,
        default=64,
        metavar="N",
        help="compile with gcc and compare N test samples with the integer executor (0: skip; default 64)",
    )


def cmd_export_c(args: argparse.Namespace) -> int:
    from quantwise.api import quantize
    from quantwise.errors import UserError
    from quantwise.fixedpoint.cexport import compile_and_run, export_c, plan_memory
    from quantwise.fixedpoint.executor import execute, integer_params
    from quantwise.fixedpoint.simulate import enter
    from quantwise.recipes import FixedPointRecipe

    if not args.recipe and not args.recipe_file:
        args.recipe = "fixed-point"
    recipe = recipe_from_args(args)
    if not isinstance(recipe, FixedPointRecipe):
        raise UserError(
            f"export-c exports fixed-point models, not {recipe.name}: drop --recipe or use --recipe fixed-point"
        )
    if args.check < 0:
        raise UserError("--check must be 0 or a positive number of samples")
    from quantwise.outdir import check_out

    check_out(args.out, args.overwrite)
    task = load_task_from_args(args)
    qm = quantize(task.model, recipe, task.calibration)
    out = export_c(qm, Path(args.out))
    mem = plan_memory(qm.plan)
    print(f"wrote {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    print(
        f"memory: {mem.arena_bytes:,} bytes of RAM for activations (one buffer per tensor: {mem.unshared_bytes:,}), "
        f"{mem.constant_bytes:,} bytes of constants"
    )
    for row in qm.plan.summary():
        print(
            f"  {row['layer']:<24} {row['op']:<7} in {_fmt(row['input'])} -> out {_fmt(row['output'])}, "
            f"accumulator worst case {row['worst_case_accumulator_bits']} bits"
        )
    if args.check:
        fin = qm.plan.formats[qm.plan.program.input]
        xs = [enter(b[0], fin).numpy() for b in task.eval_batches]
        x = np.concatenate(xs)[: args.check]
        want = execute(integer_params(qm.plan), x)
        got = compile_and_run(out, x, want.reshape(len(x), -1).shape[1])
        same = np.array_equal(got, want.reshape(len(x), -1))
        print(
            f"C build and run: {'bit-identical' if same else 'DIFFERENT'} to the integer executor on {len(x)} samples"
        )
        return 0 if same else 1
    return 0


def _fmt(f: dict) -> str:
    kind = f"{'' if f['signed'] else 'u'}int{f['bits']}"
    return f"{kind} {f['qformat']}" if f["qformat"] else f"{kind} scale {f['scale']:.4g}"
