"""A tiny random-weight Llama-style causal LM saved to a folder (with SmolLM2's tokenizer), and text."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from quantwise.tasks.llm_load import bbc_articles, smollm2_path


@functools.cache
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, converted from its GGUF once per test process (12 s each time)."""
    from transformers import AutoTokenizer

    gguf = smollm2_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def save_tiny_llama(
    folder: Path,
    layers: int = 2,
    seed: int = 0,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    max_shard_size: str | None = None,
    tie: bool = True,
    arch: str = "llama",
) -> Path:
    """A random-weight causal LM with SmolLM2's tokenizer; ``arch="gpt2"`` gives GPT-2's structure
    (``GPT2LMHeadModel``: transformers ``Conv1D`` layers, fused QKV, learned positions, LayerNorm)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer()
    torch.manual_seed(seed)
    model: torch.nn.Module
    common = {
        "vocab_size": len(tok),
        "tie_word_embeddings": tie,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=128, **common))
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                max_position_embeddings=128,
                **common,
            )
        )
    model.eval()
    model.save_pretrained(str(folder), **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")


@pytest.fixture(scope="session")
def sharded_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2's structure (transformers ``Conv1D``, fused QKV, tied head), three blocks, 2 MB shards."""
    return save_tiny_llama(tmp_path_factory.mktemp("gpt2-sharded"), layers=3, seed=6, max_shard_size="2MB", arch="gpt2")


@pytest.fixture(scope="session")
def sharded_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three blocks, tied embeddings, saved in shards of at most 2 MB (the embedding is its own)."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("sharded"), layers=3, seed=4, max_shard_size="2MB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.fixture(scope="session")
def sharded_untied_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``sharded_llama`` with an LM head of its own (AWQ can then scale it through the final norm)."""
    return save_tiny_llama(tmp_path_factory.mktemp("untied"), layers=2, seed=5, max_shard_size="2MB", tie=False)


@pytest.fixture(scope="session")
def lm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs, _, _ = bbc_articles()
    path = tmp_path_factory.mktemp("text") / "news.txt"
    path.write_text("\n\n".join(docs[:12]), encoding="utf-8")
    return path


def _as_gguf(folder: Path, out: Path) -> Path:
    """An HF folder written as an all-F32 GGUF (SmolLM2's tokenizer and metadata, its own shapes)."""
    from transformers import AutoModelForCausalLM

    from quantwise.runtime.gguf_write import write_gguf

    lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    write_gguf(lm, {}, smollm2_path(), out)
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _as_gguf(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_hd64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose heads are 64 wide (KV-cache blocks of 32 need a multiple of 32)."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-hd64"), hidden=128, heads=2, kv_heads=1)
    return _as_gguf(folder, tmp_path_factory.mktemp("tiny-hd64-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def mha_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with as many key/value heads as query heads (each v_proj channel feeds one o_proj input)."""
    return save_tiny_llama(tmp_path_factory.mktemp("mha-llama"), kv_heads=4)
