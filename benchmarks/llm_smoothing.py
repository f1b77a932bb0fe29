"""AWQ and SmoothQuant on SmolLM2 in the PyTorch simulation: test-set quality of recipes given as
JSON (recipe keys; ``recipe`` names the recipe, default per-token dynamic W8A8), with and without
scaling a Linear through a sibling Linear (down_proj through up_proj). Prints one JSON line each.

    .venv/bin/python benchmarks/llm_smoothing.py '{}' '{"smoothquant": true}' \\
        '{"recipe": "w4a16", "group_size": 128, "method": "awq"}' [--no-siblings] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from quantwise.api import build_quantized, shard_outputs
from quantwise.recipes import get_recipe
from quantwise.tasks.llm import build_smollm2
from quantwise.transform import rotation, smoothing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+", help="recipe keys as JSON; 'recipe' names the recipe")
    ap.add_argument("--no-siblings", action="store_true", help="never scale a Linear through a sibling Linear")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rotation-seed", type=int, default=0, help="the rotations' random seed (rotate: true)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rotation.SEED = args.rotation_seed
    if args.no_siblings:  # the ablation: find_groups then sees no sibling-fed Linear
        smoothing.linear_feeders = lambda *_a, **_k: {}
    task = build_smollm2()
    for spec in args.specs:
        keys = json.loads(spec)
        name = keys.pop("recipe", "dynamic-int8")
        if name == "dynamic-int8":
            keys.setdefault("activations", "per-token")
        t = time.perf_counter()
        qm = build_quantized(task, get_recipe(name, **keys))
        build_s = time.perf_counter() - t
        out = shard_outputs(task, qm, "torch", 0, len(task.eval_batches), threads=args.threads)
        info = qm.info.get("smoothquant") or qm.info.get("awq") or {}
        alphas = [a for a in (info.get("alphas") or {}).values()]
        row = {
            "recipe": name,
            **keys,
            "siblings": not args.no_siblings,
            **({"rotation_seed": args.rotation_seed} if keys.get("rotate") else {}),
            "metrics": {k: round(v, 4) for k, v in task.score(out).items() if isinstance(v, float)},
            "build_s": round(build_s, 1),
            "groups": info.get("groups"),
            "scaled_layers": info.get("scaled_layers"),
            "alphas": {str(a): alphas.count(a) for a in sorted(set(alphas), key=lambda a: (a is None, a or 0))},
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
