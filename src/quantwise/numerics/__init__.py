"""Pure quantization math: types, granularity, affine maps, packing."""

from quantwise.numerics.affine import (
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_bias,
    quantize_tensor,
)
from quantwise.numerics.granularity import Granularity, PerChannel, PerGroup, PerTensor
from quantwise.numerics.packing import pack_int4, unpack_int4
from quantwise.numerics.qtypes import (
    BF16,
    FP16,
    INT4,
    INT8,
    INT16,
    INT32,
    QTYPES,
    UINT4,
    UINT8,
    UINT16,
    QType,
    get_qtype,
)

__all__ = [
    "quantize_bias",
    "BF16",
    "FP16",
    "INT4",
    "INT8",
    "INT16",
    "INT32",
    "QTYPES",
    "UINT4",
    "UINT8",
    "UINT16",
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QType",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "get_qtype",
    "pack_int4",
    "quantize",
    "quantize_tensor",
    "unpack_int4",
]
