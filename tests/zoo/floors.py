"""Output SQNR floors (dB, against FP32) per zoo model and recipe, with the reason for each.

Random weights: the floors check that quantization is applied as declared and nothing else
changed (a dropped padding or an unfolded BatchNorm costs tens of dB), not a model's accuracy.
Each floor sits about 6 dB below the value measured when it was set (in the comment).
"""

FLOORS: dict[str, dict[str, float]] = {
    # CNNs with BatchNorm folded by dataflow, depthwise convs quantized. Measured (dB): resnet 44.6 / 46.1 / 46.2,
    # mobilenetv2 40.7 / 43.9 / 43.9, tf-same-padding 45.3 / 47.6 / 49.8 (static / dynamic / weight-only); with
    # ReLU6 fused into static int8 (output ranges clipped to [0, 6]) mobilenetv2 41.9 and tf-same-padding 46.6.
    "resnet-style": {"static-int8": 38.0, "dynamic-int8": 40.0, "weight-int8": 40.0},
    "mobilenetv2-style": {"static-int8": 34.0, "dynamic-int8": 37.0, "weight-int8": 37.0},
    "tf-same-padding": {"static-int8": 39.0, "dynamic-int8": 41.0, "weight-int8": 43.0},
    # more_models.py (2026-12-03, residual adds quantized): measured mobilenetv3 44.5 / 45.1 / 52.5, efficientnet
    # 41.3 / 42.7 / 48.5, convnext 34.9 / 39.2 / 47.8, shufflenetv2 40.6 / 43.0 / 46.0. Dynamic int8 quantizes the
    # Linear layers only (the convs are listed in float with the reason). resnet-style static fell from 44.6 to 41.7
    # when its residual adds were quantized, mobilenetv2-style from 41.9 to 40.3.
    "mobilenetv3-style": {"static-int8": 38.0, "dynamic-int8": 39.0, "weight-int8": 46.0},
    "efficientnet-style": {"static-int8": 35.0, "dynamic-int8": 36.0, "weight-int8": 42.0},
    "convnext-style": {"static-int8": 29.0, "dynamic-int8": 33.0, "weight-int8": 41.0},
    "shufflenetv2-style": {"static-int8": 34.0, "dynamic-int8": 37.0, "weight-int8": 40.0},
    # Transformers: attention matmuls, LayerNorm/RMSNorm and softmax stay float; static int8 quantizes the
    # inputs of every Linear per tensor. Measured: bert 28.8 / 39.4 / 43.1, gpt2 36.0 / 36.1 / 40.0,
    # vit 36.1 / 36.9 / 40.4, llama 34.0 / 35.6 / 39.8.
    "bert-classifier": {"static-int8": 22.0, "dynamic-int8": 33.0, "weight-int8": 37.0},
    "gpt2-lm": {"static-int8": 30.0, "dynamic-int8": 30.0, "weight-int8": 34.0},
    "vit-classifier": {"static-int8": 30.0, "dynamic-int8": 30.0, "weight-int8": 34.0},
    "llama-lm": {"static-int8": 28.0, "dynamic-int8": 29.0, "weight-int8": 33.0},
}
