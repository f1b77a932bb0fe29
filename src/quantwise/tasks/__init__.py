"""Built-in tasks and loaders for the user's own model and data."""

from __future__ import annotations

from pathlib import Path

from quantwise.errors import UserError
from quantwise.tasks.base import Task

BUILTIN = ("bbc-minilm", "mnist-cnn", "smollm2")
DEFAULT_TASK = "mnist-cnn"


def load_task(
    spec: str | None = None,
    *,
    model: str | None = None,
    data: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
    image_size: int = 28,
    grayscale: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    trust_pickle: bool = False,
) -> Task:
    """Resolve a task: a built-in name, ``path/task.py:function``, ``--model DIR --data FILE``
    (Hugging Face folder + CSV/JSONL) or ``--model FILE.pt --data IMAGE_DIR``."""
    if model or data:
        if not (model and data):
            raise UserError(
                "a user task needs both --model and --data (a Hugging Face folder + CSV/JSONL, a .pt model + image folder, or a causal LM folder/.gguf + text)"
            )
        if Path(model).suffix.lower() == ".onnx":
            from quantwise.tasks.onnx_task import build_onnx_task

            return build_onnx_task(
                model,
                data,
                limit=limit,
                text_column=text_column,
                label_column=label_column,
                image_size=image_size,
                mean=mean,
                std=std,
            )
        from quantwise.tasks.tf_model import is_tf_model

        if is_tf_model(Path(model)):
            from quantwise.tasks.tf_model import build_tf_task

            return build_tf_task(model, data, limit=limit)
        refuse_untakeable(Path(model))
        from quantwise.tasks.llm_load import is_causal_lm

        if is_causal_lm(model):
            from quantwise.tasks.llm import build_user_lm

            return build_user_lm(model, data, text_column, limit=limit)
        if Path(data).suffix.lower() == ".txt":
            raise UserError(
                f"--data {data} is plain text, which scores causal LMs, and {model} is not one (no .gguf, no "
                "causal-LM architecture such as *ForCausalLM in its config.json): give a CSV/JSONL with text and label columns"
            )
        from quantwise.tasks.hf_classifier import head_kind

        if head_kind(model) == "image":
            from quantwise.tasks.hf_classifier import build_hf_image_classifier

            return build_hf_image_classifier(model, data, limit=limit)
        if Path(data).is_dir():
            from quantwise.tasks.images import build_image_task

            return build_image_task(
                model, data, image_size, grayscale, mean, std, limit=limit, trust_pickle=trust_pickle
            )
        from quantwise.tasks.text import build_hf_csv

        return build_hf_csv(model, data, text_column, label_column, limit=limit)
    spec = spec or DEFAULT_TASK
    if spec == "mnist-cnn":
        from quantwise.tasks.mnist import build

        return build(limit=limit)
    if spec == "smollm2":
        from quantwise.tasks.llm import build_smollm2

        return build_smollm2(limit=limit)
    if spec == "bbc-minilm":
        from quantwise.tasks.text import build_bbc

        return build_bbc(limit=limit)
    if ":" in spec and spec.split(":")[0].endswith(".py"):
        from quantwise.tasks.user import build_python_task

        return build_python_task(spec)
    raise UserError(
        f"unknown task {spec!r}: use one of {', '.join(BUILTIN)}, path/task.py:function, or --model DIR --data FILE"
    )


TAKES = (
    "quantwise takes a PyTorch nn.Module (task file or torch.save), a torch.export program (.pt2), a Hugging Face folder, a GGUF file, an ONNX file "
    "or a TensorFlow SavedModel/.keras file"
)


def refuse_untakeable(path: Path) -> None:
    """One line for a model format quantwise cannot take, naming what it takes and how to get there."""
    low = path.name.lower()
    if low.endswith(".pb"):
        raise UserError(
            f"{path} is a frozen TensorFlow graph: pass the SavedModel folder or the .keras file it came from, or "
            "convert it with python -m tf2onnx.convert --graphdef FILE --inputs ... --outputs ... --output model.onnx"
        )
    if low.endswith(".tflite"):
        raise UserError(
            f"{path} is a converted TFLite model: quantwise quantizes the float model it came from ({TAKES})"
        )


__all__ = ["BUILTIN", "DEFAULT_TASK", "Task", "load_task"]
