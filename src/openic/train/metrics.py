"""Accuracy bookkeeping kept on the device (one host sync per log line, not per batch) and the loss functions.

- single-label: ``accuracy`` = argmax hits; ``top_k_accuracy_K`` = label within the K largest logits.
- multi-label: sigmoid > 0.5 per class, accuracy averaged over every (sample, class) pair — SageMaker reports the
  mean over classes and does not publish its threshold; 0.5 is our documented choice.
- losses: softmax cross-entropy averaged over the batch (MXNet's ``SoftmaxOutput`` with ``rescale_grad=1/B``);
  multi-label: binary cross-entropy summed over classes, averaged over the batch, with per-class positive weights
  ``negatives / positives`` from the training labels when ``use_weighted_loss=1``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Accuracy:
    """Running hit counts for accuracy (and top-k), summed on the device."""

    def __init__(self, device: torch.device, multi_label: bool, top_k: int | None) -> None:
        self.multi_label, self.top_k = multi_label, top_k
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.hits = torch.zeros((), dtype=torch.float64, device=self.device)
        self.topk_hits = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0  # samples (single-label) or sample-class pairs (multi-label)
        self.samples = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        logits = logits.float()
        n = logits.shape[0]
        if self.multi_label:
            self.hits += ((logits > 0) == (labels > 0.5)).sum()
            self.count += labels.numel()
        else:
            target = labels[:, 0].long()
            self.hits += (logits.argmax(dim=1) == target).sum()
            if self.top_k:
                k = min(self.top_k, logits.shape[1])
                self.topk_hits += (logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum()
            self.count += n
        if loss is not None:
            self.loss_sum += loss.detach().double() * n
        self.samples += n

    def merge(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> Accuracy:
        """Replace the counts by their sum over ranks (``reduce_sum`` all-reduces in place), so every rank reports
        the accuracy of the whole data set, not of its shard."""
        totals = torch.stack([self.hits, self.topk_hits, self.loss_sum,
                              torch.tensor(float(self.count), dtype=torch.float64, device=self.device),
                              torch.tensor(float(self.samples), dtype=torch.float64, device=self.device)])
        totals = reduce_sum(totals)
        self.hits, self.topk_hits, self.loss_sum = totals[0], totals[1], totals[2]
        self.count, self.samples = int(totals[3].item()), int(totals[4].item())
        return self

    def result(self, prefix: str = "") -> dict[str, float]:
        """``{prefix + "accuracy": ..., prefix + "loss": ..., prefix + "top_k_accuracy_K": ...}`` (one sync)."""
        if self.samples == 0:
            return {}
        values = torch.stack([self.hits, self.topk_hits, self.loss_sum]).tolist()
        out = {f"{prefix}accuracy": values[0] / self.count}
        if self.top_k and not self.multi_label:
            out[f"{prefix}top_k_accuracy_{self.top_k}"] = values[1] / self.samples
        out[f"{prefix}loss"] = values[2] / self.samples
        return out


def prefixed(split: str, values: dict[str, float]) -> dict[str, float]:
    """Metric names as tracked (``train:accuracy``, ``validation:top_k_accuracy_5``): one spelling everywhere."""
    return {f"{split}:{k}": v for k, v in values.items()}


def make_loss(multi_label: bool, use_weighted_loss: bool, train_labels: np.ndarray,
              device: torch.device) -> LossFn:
    """The training loss for the label kind; weights come from the training labels' class balance."""
    if not multi_label:
        def softmax_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float(), labels[:, 0].long())

        return softmax_ce
    pos_weight = None
    if use_weighted_loss:
        positives = (train_labels > 0.5).sum(axis=0).astype(np.float64)
        negatives = train_labels.shape[0] - positives
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        pos_weight = torch.tensor(weights, dtype=torch.float32, device=device)

    def sigmoid_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight, reduction="none")
        return loss.sum(dim=1).mean()

    return sigmoid_bce
