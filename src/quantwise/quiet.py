"""Keeping third-party noise off the user's terminal (never hiding errors: exceptions still rise)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


def import_torchao_quietly() -> None:
    """transformers and litert-torch import torchao when it is installed (the tflite extra brings it);
    torchao logs warnings about optional CUDA kernels a CPU machine never loads, and torch logs a
    deprecation for each Enum it registers. Import it once with both silenced, then put the
    logging configuration back as it was."""
    logger = logging.getLogger("torch.utils._pytree")

    def drop(r: logging.LogRecord) -> bool:
        return "natively supported by torch.compile" not in r.getMessage()

    logger.addFilter(drop)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import torchao  # noqa: F401
    except ImportError:
        pass
    finally:
        logging.disable(previous)
        logger.removeFilter(drop)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``n`` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def env_vars(**values: str) -> Iterator[None]:
    """Environment variables set for the block (those the caller already set are kept), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


@contextmanager
def hf_quiet() -> Iterator[None]:
    """transformers' logging at error level and its progress bars off for the block, then restored."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def native_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the block: C++ libraries (the LiteRT
    converter) write progress there directly, past Python's ``sys.stdout``/``sys.stderr``."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
