"""A synthetic Llama-style checkpoint larger than a memory cap, and a child process that works on it
under that cap (RLIMIT_AS): used by tests/llm/test_streaming.py and benchmarks/streaming.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

# The child imports everything and builds the model's skeleton once, then caps its address space at
# what that uses plus ``headroom`` bytes ("inf": no cap), then either loads the model whole
# (``whole``), quantizes it in memory (``memory``) or streams it (``stream``); prints one JSON line.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import torch
    import quantwise.pipeline.streaming as st
    from quantwise.recipes import WeightOnlyRecipe

    folder, out, mode, headroom, method = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    st.skeleton(folder)  # imports transformers' model code before the cap
    torch.ones(256, 256) @ torch.ones(256, 256)
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    if headroom != "inf":
        resource.setrlimit(resource.RLIMIT_AS, (vm + int(headroom), vm + int(headroom)))
    calib = [(torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(i)),) for i in range(2)]
    recipe = WeightOnlyRecipe(bits=4, group_size=128, method=method)
    start = time.perf_counter()
    if mode == "whole":
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        except (MemoryError, RuntimeError) as e:
            print(json.dumps({"whole": "failed", "error": type(e).__name__}))
            sys.exit(0)
        print(json.dumps({"whole": "loaded"}))
        sys.exit(0)
    if mode == "memory":
        from quantwise.api import quantize
        from quantwise.pipeline.shards import write_part
        from transformers import AutoModelForCausalLM
        from quantwise.tasks.llm_load import CausalLMLogits
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
        model = CausalLMLogits(lm.eval()).eval()  # as load_causal_lm, which also wants a tokenizer
        qm = quantize(model, recipe, calib)
        out.mkdir()
        write_part(out, "all.safetensors", qm.layers, {})
        layers = len(qm.layers)
    else:
        layers = len(st.stream_quantize(folder, recipe, calib, out)["layers"])
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps({"layers": layers, "peak_rss_bytes": peak, "baseline_vm_bytes": vm,
                      "seconds": round(time.perf_counter() - start, 1)}))
    """
)


def write_big_llama(folder: Path, blocks: int = 24, hidden: int = 1024) -> int:
    """Config and one safetensors shard per block, written without ever holding the model; the
    checkpoint's size in bytes (24 blocks of 1024: 0.66 GiB)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=blocks,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(str(folder))
    g = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    total = 0

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * 4 for t in tensors.values())

    outer = {"model.embed_tokens.weight": torch.randn(512, hidden, generator=g) * 0.02}
    shard("outer.safetensors", {**outer, "model.norm.weight": torch.ones(hidden)})
    lin = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    lin += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    for i in range(blocks):
        t = {f"model.layers.{i}.{n}.weight": torch.randn(hidden, hidden, generator=g) * 0.03 for n in lin}
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden)
        t[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(hidden)
        shard(f"block-{i:03d}.safetensors", t)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def run_capped(folder: Path, out: Path, mode: str, headroom: int | None, method: str, threads: int = 1) -> dict:
    """Run ``CHILD`` (``headroom`` None: no cap). An address-space cap counts what glibc's heap keeps
    after a free, so the child maps each buffer of 1 MiB or more on its own, which gives it back
    (docs/streaming.md); resident memory stays flat either way (streaming calls malloc_trim)."""
    env = {
        "MALLOC_MMAP_THRESHOLD_": str(2**20),
        "MALLOC_ARENA_MAX": "2",
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "QUANTWISE_PROGRESS": "0",
        "PATH": "/usr/bin:/bin",
    }
    cap = "inf" if headroom is None else str(headroom)
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(out), mode, cap, method],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if r.returncode != 0:
        raise RuntimeError(f"the {mode} child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
