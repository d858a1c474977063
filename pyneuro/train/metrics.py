"""Classification metrics and the run's metrics log (JSON lines, flushed after every record)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(cm: torch.Tensor) -> dict:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus macro averages."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    per_class = {str(c): {"precision": precision[c].item(), "recall": recall[c].item(),
                          "f1": f1[c].item(), "support": int(support[c].item())} for c in range(len(tp))}
    return {"per_class": per_class,
            "macro_avg": {"precision": precision.mean().item(), "recall": recall.mean().item(),
                          "f1": f1.mean().item()},
            "accuracy": (tp.sum() / cm.sum().clamp(min=1)).item()}


def format_report(report: dict) -> str:
    lines = ["class  precision  recall     f1  support"]
    for c, r in report["per_class"].items():
        lines.append(f"{c:>5}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:.4f}  {r['support']:7d}")
    m = report["macro_avg"]
    lines.append(f"macro  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}")
    return "\n".join(lines)


class MetricsLog:
    """Append-only JSONL file; re-reading it gives every record written so far."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: everything before it still counts
                break
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (used on resume, so replayed steps are not logged twice)."""
        from .checkpoint import atomic_write_text

        kept = [r for r in self.read() if r.get("step", 0) <= step]
        # Atomic: a kill during the rewrite must not lose the records before ``step``.
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
