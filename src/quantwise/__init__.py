"""quantwise: which quantization format is best for my model, on my data, on my hardware?"""

from quantwise.api import evaluate, lower, quantize
from quantwise.quantized import QuantizedModel
from quantwise.recipes import get_recipe
from quantwise.tasks import Task, load_task

__version__ = "0.1.0"
__all__ = ["QuantizedModel", "Task", "__version__", "evaluate", "get_recipe", "load_task", "lower", "quantize"]
