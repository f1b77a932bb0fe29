"""Export a fixed-point model as portable C99 for microcontrollers.

Writes, into one folder (atomically: a temporary folder renamed when complete):

* ``qw_config.h``: weight type and accumulator width;
* ``qw_model.h`` / ``qw_model.c``: the integer weights, int32 biases, per-channel multipliers and
  shifts, one static arena for the activations, and ``qw_model_run(in, out)`` calling the kernels
  in order. Each activation is stored at its format's width (1 byte for 8-bit formats) at an
  offset in the arena chosen so that tensors alive at the same time never overlap (flatten and
  reshape share their input's bytes); ``QW_ARENA_BYTES`` is the RAM it needs;
* ``qw_kernels.h`` / ``qw_kernels.c``: the operators (no float, no heap);
* ``qw_main.c``: a host harness reading int32 samples on stdin and writing outputs on stdout;
* ``README.txt``: how to build and call it, and the input and output formats.

Build: ``gcc -std=c99 -Wall -Werror -O2 qw_main.c qw_model.c qw_kernels.c -o qw_model``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.fixedpoint.executor import integer_params
from quantwise.quantized import QuantizedModel, atomic_dir

C_DIR = Path(__file__).parent / "c"
C_FILES = ("qw_kernels.c", "qw_kernels.h", "qw_main.c")
BUILD = "gcc -std=c99 -Wall -Werror -O2 qw_main.c qw_model.c qw_kernels.c -o qw_model"


C_TYPES = {"int8": "QW_I8", "uint8": "QW_U8", "int16": "QW_I16", "uint16": "QW_U16"}


@dataclass
class MemoryPlan:
    """Where each activation lives in the C arena.

    Attributes:
        root: tensor -> the tensor whose bytes it uses (itself, or for flatten/reshape its input's root).
        offsets: root tensor -> byte offset in the arena (multiples of 4).
        arena_bytes: the arena's size.
        unshared_bytes: what one buffer per tensor, at the same widths, would take.
        constant_bytes: weights (1 or 2 bytes each), int32 biases and multipliers, uint8 shifts.
    """

    root: dict[str, str]
    offsets: dict[str, int]
    arena_bytes: int
    unshared_bytes: int
    constant_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "activation_ram_bytes": self.arena_bytes,
            "activation_bytes_unshared": self.unshared_bytes,
            "constant_bytes": self.constant_bytes,
        }


def plan_memory(plan: Any) -> MemoryPlan:
    """Place every activation in one arena: greedy, largest first, at the lowest 4-aligned offset
    free of every tensor whose lifetime (producer to last reader, in program order) overlaps."""
    prog = plan.program
    root = {prog.input: prog.input}
    life = {prog.input: [-1, -1]}
    for i, n in enumerate(prog.nodes):
        for t in n.inputs:
            life[root[t]][1] = i
        if n.op in ("flatten", "reshape"):
            root[n.output] = root[n.inputs[0]]
        else:
            root[n.output] = n.output
            life[n.output] = [i, i]
    life[root[prog.output]][1] = len(prog.nodes)  # read after the last node
    shapes = _shapes(prog)
    nbytes = {t: math.prod(shapes[t]) * plan.formats[t].bits // 8 for t in life}
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets = {}
    for t in sorted(life, key=lambda t: (-nbytes[t], life[t][0])):
        first, last = life[t]
        off = 0
        for o, e, _f, _l in sorted(p for p in placed if not (p[3] < first or last < p[2])):
            if off + nbytes[t] <= o:
                break
            off = max(off, (e + 3) // 4 * 4)
        placed.append((off, off + nbytes[t], first, last))
        offsets[t] = off
    order = {t: i for i, t in enumerate(life)}
    wb = 2 if _wide(plan) else 1
    constants = sum(
        lp.weight.numel() * wb + lp.bias.numel() * 9 for lp in plan.layers.values()
    )  # bias, multiplier, shift
    return MemoryPlan(
        root,
        dict(sorted(offsets.items(), key=lambda kv: order[kv[0]])),
        max(e for _, e, _, _ in placed),
        sum(nbytes.values()),
        constants,
    )


def _wide(plan: Any) -> bool:
    """Whether any weight needs 16 bits."""
    return any(int(lp.weight.abs().max()) > 127 for lp in plan.layers.values())


def _shapes(prog: Any) -> dict[str, list[int]]:
    """Every tensor's shape without the batch dimension."""
    return {prog.input: list(prog.input_shape)} | {n.output: n.attrs["shape"] for n in prog.nodes}


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    flat = [str(int(v)) for v in values.reshape(-1)]
    rows = [", ".join(flat[i : i + 24]) for i in range(0, len(flat), 24)]
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def export_c(qm: QuantizedModel, out: str | os.PathLike[str]) -> Path:
    """Write the C files for fixed-point ``qm`` into folder ``out`` (replaced if it exists)."""
    if qm.plan is None:
        raise RuntimeError("C export needs a fixed-point model (recipe fixed-point)")
    plan, p = qm.plan, integer_params(qm.plan)
    prog = plan.program
    wtype = "int16_t" if _wide(plan) else "int8_t"
    shapes = _shapes(prog)
    size = {k: math.prod(v) for k, v in shapes.items()}

    mem = plan_memory(plan)
    data, calls = [], []

    def buf(t: str) -> str:
        return f"t_{_ident(mem.root[t])}"

    for n in prog.nodes:
        a = n.attrs
        x = buf(n.inputs[0])
        if n.op in ("conv2d", "linear"):
            w, b, m, r = p.layers[n.layer]
            lid = _ident(n.layer)
            data += [
                _array(wtype, f"w_{lid}", w),
                _array("int32_t", f"b_{lid}", b),
                _array("int32_t", f"m_{lid}", m),
                _array("uint8_t", f"s_{lid}", r),
            ]
            sat = int(p.worst_bits[n.layer] > p.accumulator)
            lo, hi = a["clip"]
            if n.op == "conv2d":
                c_in, h, wd = shapes[n.inputs[0]]
                c_out, ho, wo = a["shape"]
                kh, kw = a["kernel"]
                data.append(
                    f"static const qw_conv_t c_{lid} = {{{c_in}, {h}, {wd}, {c_out}, {ho}, {wo}, {kh}, {kw}, "
                    f"{a['stride'][0]}, {a['stride'][1]}, {a['padding'][0]}, {a['padding'][1]}, {a.get('groups', 1)}, {lo}, {hi}, {sat}}};\n"
                )
                calls.append(f"qw_conv2d(&c_{lid}, {x}, w_{lid}, b_{lid}, m_{lid}, s_{lid}, {buf(n.output)});")
            else:
                calls.append(
                    f"qw_linear({w.shape[1]}, {w.shape[0]}, {sat}, {lo}, {hi}, {x}, w_{lid}, b_{lid}, m_{lid}, s_{lid}, {buf(n.output)});"
                )
        elif n.op in ("relu", "relu6"):
            calls.append(f"qw_clip({size[n.output]}, {a['clip'][0]}, {a['clip'][1]}, {x}, {buf(n.output)});")
        elif n.op in ("maxpool", "avgpool"):
            c, h, wd = shapes[n.inputs[0]]
            _, ho, wo = a["shape"]
            k, s = a["kernel"], a["stride"]
            if n.op == "maxpool":
                pd = a["padding"]
                calls.append(
                    f"qw_maxpool({c}, {h}, {wd}, {k[0]}, {k[1]}, {s[0]}, {s[1]}, {pd[0]}, {pd[1]}, {ho}, {wo}, {x}, {buf(n.output)});"
                )
            else:
                calls.append(
                    f"qw_avgpool({c}, {h}, {wd}, {k[0]}, {k[1]}, {s[0]}, {s[1]}, {ho}, {wo}, {a['multiplier']}, {a['shift']}, {x}, {buf(n.output)});"
                )
        elif n.op == "add":
            y = buf(n.inputs[1])
            (ma, mb), (ra, rb) = a["multiplier"], a["shift"]
            calls.append(
                f"qw_add({size[n.output]}, {x}, {ma}, {ra}, {y}, {mb}, {rb}, {a['clip'][0]}, {a['clip'][1]}, {buf(n.output)});"
            )
        elif n.op == "pad":
            c, h, wd = shapes[n.inputs[0]]
            left, _, top, _ = a["pad"]
            _, ho, wo = a["shape"]
            calls.append(f"qw_pad({c}, {h}, {wd}, {top}, {left}, {ho}, {wo}, {x}, {buf(n.output)});")
        # flatten / reshape: no call, the output shares its input's bytes (NCHW order kept)

    in_buf, out_buf = buf(prog.input), buf(prog.output)
    fin, fout = plan.formats[prog.input], plan.formats[prog.output]
    header = (
        "/* Generated by quantwise: fixed-point model, integer only. */\n#ifndef QW_MODEL_H\n#define QW_MODEL_H\n\n#include <stdint.h>\n\n"
        f"#define QW_INPUT_SIZE {size[prog.input]}   /* {fin.qtype}, real value = q * {fin.scale!r} */\n"
        f"#define QW_OUTPUT_SIZE {size[prog.output]}  /* {fout.qtype}, real value = q * {fout.scale!r} */\n"
        f"#define QW_ARENA_BYTES {mem.arena_bytes}  /* activation RAM (static, inside qw_model.c) */\n\n"
        "/* One sample: in[QW_INPUT_SIZE] (NCHW, batch of one) -> out[QW_OUTPUT_SIZE]. Not reentrant (static buffers). */\n"
        "void qw_model_run(const int32_t *in, int32_t *out);\n\n#endif\n"
    )
    body = [
        "/* Generated by quantwise: weights, integer rescaling parameters and the operator sequence. */\n",
        '#include "qw_kernels.h"\n#include "qw_model.h"\n\n',
        *data,
        "\n",
    ]
    body.append("static int32_t qw_arena[(QW_ARENA_BYTES + 3) / 4]; /* int32_t: 4-byte aligned */\n")
    body.append(
        "\nvoid qw_model_run(const int32_t *in, int32_t *out) {\n    uint8_t *const arena = (uint8_t *)qw_arena;\n    int i;\n"
    )
    body += [
        f"    const qw_tensor_t t_{_ident(t)} = {{arena + {off}, {C_TYPES[plan.formats[t].qtype]}}};  /* {plan.formats[t].qtype} x {size[t]} */\n"
        for t, off in mem.offsets.items()
    ]
    body.append(f"    for (i = 0; i < QW_INPUT_SIZE; ++i) qw_store({in_buf}, i, in[i]);\n")
    body += [f"    {c}\n" for c in calls]
    body.append(f"    for (i = 0; i < QW_OUTPUT_SIZE; ++i) out[i] = qw_load({out_buf}, i);\n}}\n")
    config = (
        f"#ifndef QW_CONFIG_H\n#define QW_CONFIG_H\n#include <stdint.h>\ntypedef {wtype} qw_weight_t;\n"
        f"#define QW_ACC_BITS {p.accumulator}\n#endif\n"
    )
    readme = (
        f"quantwise fixed-point model ({qm.recipe.name}), integer-only C99.\n\nBuild on a host:\n  {BUILD}\n"
        f"Run: ./qw_model < input.bin > output.bin (int32 little-endian, {size[prog.input]} values in and "
        f"{size[prog.output]} out per sample).\n\nInput: {fin.qtype}, q = round(x / {fin.scale!r}) clipped to "
        f"[{fin.qmin}, {fin.qmax}].\nOutput: {fout.qtype}, x = q * {fout.scale!r}.\n"
        "Rescaling: y = round_half_even(acc * multiplier / 2^shift), then clip (qw_kernels.c).\n"
        f"\nMemory: {mem.arena_bytes} bytes of RAM for activations (QW_ARENA_BYTES; one tensor per "
        f"buffer would take {mem.unshared_bytes}), {mem.constant_bytes} bytes of constants "
        "(weights, biases, multipliers, shifts).\n"
    )

    out = Path(out)
    with atomic_dir(out) as tmp:
        for f in C_FILES:
            shutil.copy(C_DIR / f, tmp / f)
        (tmp / "qw_config.h").write_text(config)
        (tmp / "qw_model.h").write_text(header)
        (tmp / "qw_model.c").write_text("".join(body))
        (tmp / "README.txt").write_text(readme)
    return out


def compile_and_run(folder: str | os.PathLike[str], x: np.ndarray, n_out: int) -> np.ndarray:
    """Build the exported C with gcc (``-std=c99 -Wall -Werror``) and run it on integer samples ``x``.

    Returns the integer outputs ``(len(x), n_out)``. Raises RuntimeError if gcc is missing or fails.
    """
    import subprocess

    folder = Path(folder)
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is not installed: install it (apt install gcc) to build the C export")
    proc = subprocess.run(BUILD, shell=True, cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"gcc failed: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode}"
        )
    run = subprocess.run([str(folder / "qw_model")], input=x.astype("<i4").tobytes(), capture_output=True, check=True)
    return np.frombuffer(run.stdout, "<i4").reshape(len(x), n_out).astype(np.int64)
