"""Quantization-aware training: PTQ initialisation, training, BatchNorm folding, conversion, parity, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantwise.api import lower, quantize
from quantwise.errors import UserError
from quantwise.recipes import get_recipe
from quantwise.runtime.torch_sim import lower_torch
from quantwise.train import loop
from quantwise.train.loop import TrainData, task_train_data, train_qat
from quantwise.transform.qat import QATLayer, convert_qat, prepare_qat, ptq_recipe


def _out(model, batches):
    with torch.no_grad():
        return torch.cat([model(*b) for b in batches])


def _train_loss(prepared, data):
    prepared.model.eval()
    with torch.no_grad():
        return float(
            np.mean(
                [nn.functional.cross_entropy(prepared.model(*b), y).item() for b, y in zip(data.batches, data.labels)]
            )
        )


@pytest.mark.parametrize("name,lsq", [("qat-w4a8", False), ("qat-w4a8", True), ("qat-w4", False)])
def test_training_starts_exactly_where_ptq_ends(mnist, name, lsq):
    recipe = get_recipe(name, lsq=lsq)
    prepared = prepare_qat(mnist.model, recipe, mnist.calibration)
    prepared.model.eval()
    ptq = lower_torch(quantize(mnist.model, ptq_recipe(recipe), mnist.calibration))
    batches = mnist.eval_batches[:1]
    assert torch.allclose(_out(prepared.model, batches), _out(ptq, batches), rtol=0, atol=1e-4)
    assert torch.allclose(_out(lower_torch(convert_qat(prepared)), batches), _out(ptq, batches), rtol=0, atol=1e-4)


def test_training_lowers_the_loss_and_onnxruntime_runs_what_was_trained(mnist, tmp_path):
    recipe = get_recipe("qat-w4a8", lsq=True, per_channel=False)  # per-tensor int4: PTQ leaves room to learn
    prepared = prepare_qat(mnist.model, recipe, mnist.calibration)
    data = task_train_data(mnist)
    before = _train_loss(prepared, data)
    scale0 = float(next(iter(prepared.layers().values())).w_scale.detach())
    res = train_qat(prepared, data, None, epochs=3, steps=0, lr=1e-3, checkpoint_dir=tmp_path / "ckpt")
    assert res.steps == 3 * len(data.batches) and len(res.history) == 3
    assert _train_loss(prepared, data) < before
    assert float(next(iter(prepared.layers().values())).w_scale.detach()) != scale0  # LSQ moved the step size
    qm = convert_qat(prepared)
    runner, _ = lower(qm, mnist, "onnxruntime", tmp_path / "ort")
    assert runner.integer_ops()["integer"] == 4
    ort = np.concatenate([runner.run(b) for b in mnist.eval_batches])
    fq = _out(prepared.model, mnist.eval_batches).numpy()
    assert (ort.argmax(1) == fq.argmax(1)).mean() == 1.0
    assert (
        np.abs(ort - fq).max() < 0.02 * np.abs(fq).max()
    )  # the last layer's output is float: a few bias/rounding steps


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.f(x), 1))


def test_conv_batchnorm_folds_during_training_and_freezes_statistics(tmp_path):
    torch.manual_seed(0)
    model = ConvBN().eval()
    xs = [torch.randn(16, 1, 8, 8) for _ in range(8)]
    ys = [(x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long() for x in xs]
    recipe = get_recipe("qat-w8a8", freeze_bn_steps=6)
    prepared = prepare_qat(model, recipe, [(x,) for x in xs[:2]])
    layer = prepared.model.f[0]
    assert isinstance(layer, QATLayer) and layer.bn is not None and isinstance(prepared.model.f[1], nn.Identity)
    data = TrainData([(x,) for x in xs], ys, [], [])
    means = []
    real_set_step = prepared.set_step

    def watch(step):
        real_set_step(step)
        means.append(layer.bn.running_mean.clone())

    prepared.set_step = watch
    train_qat(prepared, data, None, epochs=2, steps=0, lr=1e-3)
    changed = [not torch.equal(a, b) for a, b in zip(means, means[1:])]
    assert any(changed[:5]) and not any(changed[6:])  # updates before step 6, frozen after
    qm = convert_qat(prepared)
    assert qm.folded == {"f.0": "f.1"} and qm.layers["f.0"].fused_relu == "f.2"
    x = torch.randn(32, 1, 8, 8)
    assert torch.allclose(_out(lower_torch(qm), [(x,)]), _out(prepared.model, [(x,)]), rtol=0, atol=1e-4)


def test_interrupted_training_resumes_to_the_same_weights(mnist, tmp_path, monkeypatch):
    recipe = get_recipe("qat-w8a8", lsq=True)
    data = task_train_data(mnist)
    straight = prepare_qat(mnist.model, recipe, mnist.calibration)
    train_qat(straight, data, None, epochs=2, steps=0, lr=1e-3, checkpoint_dir=tmp_path / "a")
    calls = []
    real = loop._loss

    def boom(*a):
        calls.append(1)
        if len(calls) == len(data.batches) + 3:  # part-way through the second epoch
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(loop, "_loss", boom)
    first = prepare_qat(mnist.model, recipe, mnist.calibration)
    with pytest.raises(KeyboardInterrupt):
        train_qat(first, data, None, epochs=2, steps=0, lr=1e-3, checkpoint_dir=tmp_path / "b")
    monkeypatch.setattr(loop, "_loss", real)
    again = prepare_qat(mnist.model, recipe, mnist.calibration)
    res = train_qat(again, data, None, epochs=2, steps=0, lr=1e-3, checkpoint_dir=tmp_path / "b")
    assert res.resumed_from_step == len(data.batches)
    for (k, a), b in zip(straight.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mnist, tmp_path):
    data = task_train_data(mnist)
    bad = list(data.batches)
    bad[-1] = (torch.full_like(bad[-1][0], float("nan")),)
    data = TrainData(bad, data.labels, data.val_batches, data.val_labels)
    prepared = prepare_qat(mnist.model, get_recipe("qat-w8a8"), mnist.calibration)
    res = train_qat(prepared, data, None, epochs=2, steps=0, lr=1e-4, checkpoint_dir=tmp_path)
    assert "kept the last good checkpoint" in res.stopped
    assert all(torch.isfinite(p).all() for p in prepared.model.parameters())
    assert (tmp_path / "checkpoint.pt").exists() or res.history == []


def test_distillation_trains_without_labels_and_bad_input_is_refused(mnist):
    data = task_train_data(mnist)
    unlabeled = TrainData(data.batches[:4], [], [], [])
    prepared = prepare_qat(mnist.model, get_recipe("qat-w4a8"), mnist.calibration)
    with pytest.raises(UserError, match="no labels: use --distill"):
        train_qat(prepared, unlabeled, None, epochs=1, steps=0, lr=1e-4)
    res = train_qat(prepared, unlabeled, mnist.model, epochs=1, steps=0, lr=1e-4)
    assert res.steps == 4
    with pytest.raises(UserError, match="learning rate must be a positive"):
        train_qat(prepared, unlabeled, mnist.model, epochs=1, steps=0, lr=0.0)
    frozen = mnist.build_model()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        prepare_qat(frozen, get_recipe("qat-w8a8"), mnist.calibration)
    with pytest.raises(UserError, match=r"steps must be in \[0, inf\), got -1"):
        get_recipe("qat-w8a8", steps=-1)


def test_your_own_training_loop(mnist, tmp_path):
    prepared = prepare_qat(mnist.model, get_recipe("qat-w8a8"), mnist.calibration)
    opt = torch.optim.SGD([p for p in prepared.model.parameters() if p.requires_grad], lr=1e-3)
    prepared.model.train()
    for (x,), y in list(zip(mnist.train_batches, mnist.train_labels))[:3]:
        loss = nn.functional.cross_entropy(prepared.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    qm = convert_qat(prepared)
    qm.save(tmp_path / "q")
    runner, _ = lower(qm, mnist, "onnxruntime", tmp_path / "ort")
    assert mnist.score(np.concatenate([runner.run(b) for b in mnist.eval_batches]))["accuracy"] > 0.97


def test_output_distillation_without_labels_or_head_brings_outputs_closer_to_fp32(mnist):
    """Label-free QAT for a model whose outputs are what matters (an embedding model): match FP32's outputs."""
    data = task_train_data(mnist)
    unlabeled = TrainData(data.batches, [], [], [])
    recipe = get_recipe("qat-w4a8", per_channel=False, distill=True, distill_on="outputs")
    prepared = prepare_qat(mnist.model, recipe, mnist.calibration)
    held_out = torch.cat([b[0] for b in mnist.eval_batches])[:256]

    def rel_error() -> float:
        prepared.model.eval()
        with torch.no_grad():
            ref, got = mnist.model(held_out), prepared.model(held_out)
        return float((got - ref).pow(2).mean() / ref.pow(2).mean())

    before = rel_error()
    res = train_qat(prepared, unlabeled, mnist.model, epochs=0, steps=40, lr=1e-4, distill_on="outputs")
    after = rel_error()
    assert res.steps == 40 and after < 0.8 * before
    with pytest.raises(UserError, match="distill_on must be one of logits, outputs"):
        get_recipe("qat-w8a8", distill_on="embeddings")


def test_embedding_tables_train_in_float_and_are_stored_as_int8_per_row():
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.lin = nn.Linear(16, 3)

        def forward(self, ids):
            return self.lin(self.emb(ids).mean(1))

    torch.manual_seed(0)
    model = Bag().eval()
    batches = [(torch.randint(0, 50, (8, 5)),) for _ in range(4)]
    labels = [torch.randint(0, 3, (8,)) for _ in range(4)]
    for keep_float in (False, True):
        prepared = prepare_qat(model, get_recipe("qat-w8a8", embeddings=not keep_float), batches)
        assert isinstance(prepared.model.emb, nn.Embedding)  # trained in float
        train_qat(prepared, TrainData(batches, labels, [], []), None, epochs=0, steps=3, lr=1e-2)
        trained = prepared.model.emb.weight.detach().clone()
        qm = convert_qat(prepared)
        if keep_float:
            assert "emb" not in qm.layers and "kept in float" in qm.skipped["emb"]
            continue
        emb = qm.layers["emb"]
        assert emb.kind == "embedding" and emb.weight_qtype == "int8" and emb.weight_scale.shape == (50,)
        assert "emb" not in qm.skipped and not torch.equal(
            trained, model.emb.weight
        )  # the trained table, not the original
        assert torch.all(
            (emb.dequantized_weight() - trained).abs().amax(dim=1) <= emb.weight_scale * 0.5001
        )  # half a step per row
