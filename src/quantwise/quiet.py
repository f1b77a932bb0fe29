"""Keeping third-party noise off the user's terminal (never hiding errors: exceptions still rise)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


def import_torchao_quietly() -> None:
    """transformers and litert-torch import torchao when it is installed (the tflite extra brings it);
    torchao logs warnings about optional CUDA kernels a CPU machine never loads, and torch logs a
    deprecation for each Enum it registers. Import it once with both silenced."""
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda r: "natively supported by torch.compile" not in r.getMessage()
    )
    logging.disable(logging.WARNING)
    try:
        import torchao  # noqa: F401
    except ImportError:
        pass
    finally:
        logging.disable(logging.NOTSET)


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
