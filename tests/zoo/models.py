"""Small real architectures with random weights (structure is what the zoo tests): hand-written
CNNs in the styles of torchvision's ResNet and MobileNetV2 and of TF-port "same"-padding stems (more in
``more_models.py``: MobileNetV3, EfficientNet, ConvNeXt, ShuffleNetV2),
and transformers configs of BERT, GPT-2, ViT and Llama. Each returns ``(model, example batches)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .more_models import MORE


def _bn_stats(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
    return m.eval()


class BasicBlock(nn.Module):
    """torchvision's ResNet block: BN called in forward, one ReLU module used twice."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(16), BasicBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, ReLU6, residual."""

    def __init__(self, c: int, t: int = 4) -> None:
        super().__init__()
        h = c * t
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            InvertedResidual(16),
            InvertedResidual(16),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Conv2dSame(nn.Conv2d):
    """timm's TF-port stem: pads "same"-style with F.pad, then convolves without padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        ph = max((-(ih // -self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pw = max((-(iw // -self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TfSame(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = Conv2dSame(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16)
        self.block = InvertedResidual(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu6(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class Logits(nn.Module):
    """A transformers model as ``f(inputs) -> logits`` (one tensor)."""

    def __init__(self, hf: nn.Module, key: str) -> None:
        super().__init__()
        self.hf, self.key = hf.eval(), key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(**{self.key: x}).logits


def images(n: int = 16, size: int = 32) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 3, size, size, generator=g),) for _ in range(2)]


def tokens(n: int = 8, seq: int = 16, vocab: int = 256) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, vocab, (n, seq), generator=g),) for _ in range(2)]


def build(name: str) -> tuple[nn.Module, list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    if name == "resnet-style":
        return _bn_stats(ResNetish()), images()
    if name == "mobilenetv2-style":
        return _bn_stats(MobileNetish()), images()
    if name == "tf-same-padding":
        return _bn_stats(TfSame()), images()
    if name in MORE:
        return _bn_stats(MORE[name]()), images()
    import transformers as tf

    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    if name == "bert-classifier":
        cfg = tf.BertConfig(vocab_size=256, max_position_embeddings=32, num_labels=3, **small)
        return Logits(tf.BertForSequenceClassification(cfg), "input_ids"), tokens()
    if name == "gpt2-lm":
        cfg = tf.GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=4)
        return Logits(tf.GPT2LMHeadModel(cfg), "input_ids"), tokens()
    if name == "vit-classifier":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, num_labels=5, **small)
        return Logits(tf.ViTForImageClassification(cfg), "pixel_values"), images(8)
    if name == "llama-lm":
        cfg = tf.LlamaConfig(
            vocab_size=256, max_position_embeddings=32, num_key_value_heads=2, tie_word_embeddings=True, **small
        )
        return Logits(tf.LlamaForCausalLM(cfg), "input_ids"), tokens()
    raise KeyError(name)
