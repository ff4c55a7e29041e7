"""The task seam: classification's counts checked by hand, its target check, and the
task a run names."""
from __future__ import annotations

import pytest
import torch

from convlab.config import TrainConfig
from convlab.errors import CheckpointError, DatasetError
from convlab.tasks import CLASSIFICATION, task_of


def test_classification_counts_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0],    # true 0, predicted 0
                           [0.0, 1.0, 5.0],    # true 1, predicted 2
                           [0.0, 2.0, 1.0]])   # true 2, predicted 1
    y = torch.tensor([0, 1, 2])
    assert CLASSIFICATION.train_counts(logits, y).tolist() == [1.0]
    assert CLASSIFICATION.train_metrics(torch.tensor([1.0]), 3) == {"acc": pytest.approx(1 / 3)}
    counts = CLASSIFICATION.eval_counts(logits, y, 3)
    # top-5 of 3 classes holds every label; confusion rows are true classes
    assert counts[0] == 3
    assert counts[1:].view(3, 3).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    r = CLASSIFICATION.eval_result(counts + counts, 6.0, ["a", "b", "c"])  # two batches' sums
    assert (r.n, r.top1, r.top5, r.loss) == (6, pytest.approx(1 / 3), 1.0, 1.0)
    assert r.per_class == {"a": 1.0, "b": 0.0, "c": 0.0}
    probs = CLASSIFICATION.decode(logits)
    assert torch.allclose(probs.sum(1), torch.ones(3)) and probs.argmax(1).tolist() == [0, 2, 1]


def test_classification_loss_follows_the_config():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ce = CLASSIFICATION.loss(TrainConfig())(logits, y)
    assert float(ce) == pytest.approx(float(torch.log1p(torch.exp(torch.tensor(-2.0)))))
    assert float(CLASSIFICATION.loss(TrainConfig(loss="hinge"))(logits, y)) == 0.0


def test_classification_refuses_labels_it_cannot_use():
    with pytest.raises(DatasetError, match=r"labels must lie in 0\.\.2; found 0\.\.3"):
        CLASSIFICATION.check_targets(torch.tensor([0, 3]), 3, "data")
    with pytest.raises(DatasetError, match="int64 labels of shape"):
        CLASSIFICATION.check_targets(torch.zeros(2, 4), 3, "data")


def test_a_run_names_its_task():
    assert task_of({}) is CLASSIFICATION and task_of({"task": "classification"}) is CLASSIFICATION
    with pytest.raises(CheckpointError, match="unknown task 'segmentation'.*valid: classification"):
        task_of({"task": "segmentation"})
