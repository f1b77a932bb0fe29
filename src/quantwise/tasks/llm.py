"""Causal language-model tasks: ``smollm2`` (built in) and a user's LLM folder or GGUF file + text.

Protocol (stated in every record's ``info.protocol``):

- **Perplexity**: the documents are tokenized without special tokens, each followed by the
  end-of-text token, and concatenated; the stream is cut into non-overlapping windows of
  ``window`` tokens (stride = window). Every window is scored on its own, so each token is
  predicted from the tokens before it in its window; ``window - 1`` tokens per window count.
  The first windows evaluate, the next ones calibrate (and the last ones validate searches).
- **KL divergence and top-1 agreement** to the FP32 model, per token on the same windows: the
  FP32 next-token distributions are computed once when the task is built.
- **Zero-shot topic accuracy** (built-in task): each article's start, then
  ``"\\nTopic:"``, scored by the summed log-likelihood of each topic name as continuation
  (lm-eval-style multiple choice, unnormalised); articles never used for perplexity or calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.progress import progress_iter
from quantwise.tasks.base import Batch, Generation, MetricSpec, Task
from quantwise.tasks.llm_load import bbc_articles, load_causal_lm, read_texts, smollm2_path

LLM_METRICS = (
    MetricSpec("perplexity", higher_is_better=False, fraction=False, per_example="nll", from_mean="exp"),
    MetricSpec("kl_to_fp32", higher_is_better=False, fraction=False, per_example="kl"),
    MetricSpec("top1_agreement"),
    MetricSpec("zero_shot_accuracy"),
)
PPL, ZERO_SHOT = 0.0, 1.0  # the kind column of the per-batch rows reduce() returns


@dataclass(frozen=True)
class LMSettings:
    window: int = 512
    n_eval: int = 8
    n_calibration: int = 8
    n_validation: int = 2
    n_zero_shot: int = 40
    zero_shot_tokens: int = 32
    new_tokens: int = 64


def token_windows(tok: Any, docs: Sequence[str], window: int, n_windows: int) -> list[torch.Tensor]:
    """Up to ``n_windows`` consecutive ``(1, window)`` slices of the documents' token stream."""
    need = window * n_windows
    ids: list[int] = []
    for d in docs:
        ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) >= need:
            break
    n = min(n_windows, len(ids) // window)
    return [torch.tensor(ids[i * window : (i + 1) * window]).unsqueeze(0) for i in range(n)]


def fp32_log_probs(
    model: nn.Module, windows: Sequence[torch.Tensor], name: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per window, the FP32 model's next-token log-probabilities stored as float16 (B, S, vocab),
    and its top-1 tokens taken from the float32 logits (float16 rounding could break near-ties)."""
    out = []
    with torch.inference_mode():
        for (w,) in progress_iter([(w,) for w in windows], f"{name}: FP32 next-token distributions"):
            logits = model(w).float()
            out.append((torch.log_softmax(logits, dim=-1).to(torch.float16), logits.argmax(-1)))
    return out


def window_rows(logits: np.ndarray, ids: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    """Per predicted token: ``[PPL, nll, agrees with FP32's top-1, KL(FP32 || this)]``."""
    logp = torch.log_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)[:, :-1]
    target = ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    r = ref[0][:, :-1].float()
    agree = (logp.argmax(-1) == ref[1][:, :-1]).double()
    kl = (r.exp() * (r - logp)).sum(-1).clamp(min=0)
    rows = torch.stack([torch.full_like(nll, PPL, dtype=torch.float64), nll.double(), agree, kl.double()], dim=-1)
    return rows.reshape(-1, 4).numpy()


Pick = tuple[int, int, list[int]]  # (row of the batch, first position of the continuation, its tokens)


def choice_batch(prompt: list[int], conts: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, list[Pick]]:
    """The rows that score every continuation of ``prompt``: one-token continuations share the prompt's
    own row (a causal model's next-token distribution after the prompt does not depend on what follows
    it), longer ones get a row each; padded with ``pad`` to one width."""
    rows: list[list[int]] = [prompt] if any(len(c) == 1 for c in conts) else []
    picks: list[Pick] = []
    for c in conts:
        if len(c) != 1:
            rows.append(prompt + c)
        picks.append((0 if len(c) == 1 else len(rows) - 1, len(prompt), list(c)))
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), picks


def choice_rows(logits: np.ndarray, picks: Sequence[Pick], label: int) -> np.ndarray:
    """One row ``[ZERO_SHOT, predicted choice, label, 0]`` for a multiple-choice batch: each choice
    scored by the summed log-likelihood of its continuation's tokens."""
    logp = torch.log_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)
    scores = []
    for row, start, ids in picks:
        pos = torch.arange(start, start + len(ids))
        scores.append(float(logp[row, pos - 1].gather(-1, torch.tensor(ids).unsqueeze(-1)).sum()))
    return np.array([[ZERO_SHOT, float(np.argmax(scores)), float(label), 0.0]])


def score_rows(rows: np.ndarray) -> dict[str, Any]:
    ppl = rows[rows[:, 0] == PPL]
    m: dict[str, Any] = {
        "perplexity": float(np.exp(ppl[:, 1].mean())),
        "kl_to_fp32": float(ppl[:, 3].mean()),
        "top1_agreement": float(ppl[:, 2].mean()),
        "tokens_scored": int(len(ppl)),
    }
    zs = rows[rows[:, 0] == ZERO_SHOT]
    if len(zs):
        m["zero_shot_accuracy"] = float((zs[:, 1] == zs[:, 2]).mean())
        m["zero_shot_examples"] = int(len(zs))
    return m


def build_causal_lm_task(
    name: str,
    model: nn.Module,
    tok: Any,
    docs: Sequence[str],
    rebuild: Any,
    settings: LMSettings = LMSettings(),
    zero_shot: tuple[Sequence[str], Sequence[int], Sequence[str]] | None = None,
    limit: int | None = None,
    source: str | Path | None = None,
) -> Task:
    """A perplexity/KL/agreement task on ``docs`` (and zero-shot choices if given); ``source`` is
    the model's folder or ``.gguf`` (GGUF output copies the tokenizer from it)."""
    s = settings
    max_pos = getattr(getattr(model, "lm", model).config, "max_position_embeddings", s.window) or s.window
    window = min(s.window, int(max_pos))
    wanted = s.n_eval + s.n_calibration + s.n_validation
    windows = token_windows(tok, docs, window, wanted)
    if len(windows) < 2:
        n = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
        raise UserError(
            f"the text has {n} tokens, too short for one evaluation and one calibration window of {window} tokens: "
            f"give at least {2 * window} tokens of text"
        )
    n_eval = min(s.n_eval, max(1, len(windows) // 2))
    if limit:
        n_eval = min(n_eval, limit)
    eval_w = windows[:n_eval]
    calib_w = windows[n_eval : n_eval + s.n_calibration]
    val_w = windows[n_eval + s.n_calibration :] or windows[n_eval : n_eval + 1]
    refs = fp32_log_probs(model, eval_w, name)
    batches: list[Batch] = [(w,) for w in eval_w]
    choices: list[tuple[list[Pick], int]] = []  # (how each choice is read from the batch, label) per zero-shot batch
    if zero_shot is not None:
        zs_docs, zs_labels, topics = zero_shot
        for d, y in zip(zs_docs[: s.n_zero_shot], zs_labels[: s.n_zero_shot], strict=True):
            start = tok.decode(tok(d, add_special_tokens=False)["input_ids"][: s.zero_shot_tokens])
            prompt = tok(f"{start}\nTopic:", add_special_tokens=False)["input_ids"]
            conts = [tok(f" {t}", add_special_tokens=False)["input_ids"] for t in topics]
            rows, picks = choice_batch(prompt, conts, tok.eos_token_id)
            batches.append((rows,))
            choices.append((picks, int(y)))

    def reduce(i: int, batch: Batch, out: np.ndarray) -> np.ndarray:
        if i < n_eval:
            return window_rows(out, batch[0], refs[i])
        picks, y = choices[i - n_eval]
        return choice_rows(out, picks, y)

    prompt = eval_w[0]
    # the generation's prompt leaves room for its new tokens inside the model's positions (learned
    # position tables, as GPT-2's, have no row beyond them)
    gen_prompt = prompt[:, : max(1, min(window, int(max_pos) - s.new_tokens))]

    def latency_input(n: int) -> Batch:
        return (prompt.repeat(n, 1),)

    protocol = {
        "window": window,
        "stride": window,
        "eval_windows": n_eval,
        "tokens_scored": n_eval * (window - 1),
        "calibration_windows": len(calib_w),
        "zero_shot_examples": len(choices),
        "prefill_tokens": window,
        "decode_prompt_tokens": int(gen_prompt.shape[-1]),
        "decode_new_tokens": s.new_tokens,
    }
    metrics = LLM_METRICS if choices else LLM_METRICS[:3]

    def per_window(rows: np.ndarray) -> dict[str, list[float]]:
        """Mean NLL and KL per evaluation window (equal token counts, so their means are the metrics'):
        the unit a perplexity interval resamples, since tokens within a window are not independent."""
        ppl = rows[rows[:, 0] == PPL]
        if len(ppl) == 0 or len(ppl) % n_eval:
            return {}
        w = ppl.reshape(n_eval, -1, ppl.shape[1])
        return {"nll": w[:, :, 1].mean(1).tolist(), "kl": w[:, :, 3].mean(1).tolist()}

    return Task(
        name=name,
        model=model,
        calibration=[(w,) for w in calib_w],
        eval_batches=batches,
        score=score_rows,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
        latency_input=latency_input,
        build_model=rebuild,
        primary_metric="perplexity",
        metrics=metrics,
        validation=[(w,) for w in val_w],
        reduce=reduce,
        generation=Generation(prompt=gen_prompt, new_tokens=s.new_tokens),
        per_example=per_window,
        info={"kind": "causal-lm", "protocol": protocol, "n_test": n_eval, "source": str(source or "")},
    )


def build_smollm2(limit: int | None = None) -> Task:
    """``smollm2``: SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF) on BBC News text."""
    path = smollm2_path()
    docs, labels, cats = bbc_articles()
    order = np.random.default_rng(0).permutation(len(docs))
    stream = [docs[i] for i in order]
    zs = order[::-1]  # zero-shot articles come from the other end: never in a perplexity or calibration window
    topics = ["technology" if c == "tech" else c for c in cats]
    model, tok = load_causal_lm(path)
    return build_causal_lm_task(
        "smollm2",
        model,
        tok,
        stream,
        rebuild=lambda: load_causal_lm(path)[0],
        zero_shot=([docs[i] for i in zs], [labels[i] for i in zs], topics),
        limit=limit,
        source=path,
    )


def build_user_lm(model: str, data: str, text_column: str = "text", limit: int | None = None) -> Task:
    """The user's causal LM (folder or ``.gguf``) scored on their text file."""
    docs = read_texts(Path(data), text_column)
    if not docs:
        raise UserError(f"{data} holds no text: give documents separated by blank lines, or a text column")
    lm, tok = load_causal_lm(model)
    return build_causal_lm_task(
        f"lm:{Path(model).stem if Path(model).is_file() else Path(model).name}",
        lm,
        tok,
        docs,
        rebuild=lambda: load_causal_lm(model)[0],
        limit=limit,
        source=model,
    )
