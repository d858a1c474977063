"""The run plots, decoded back from PNG: size as configured, real content, and the content right.

Cells and frames are located through the figure's own axes (kept open by stubbing plt.close), so
each check looks at the pixels where a given cell or grid image was drawn."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from pyneuro.viz import plots

DPI = 110  # what plots._save writes with
C0_BLUE, C1_ORANGE = (0x1F / 255, 0x77 / 255, 0xB4 / 255), (0xFF / 255, 0x7F / 255, 0x0E / 255)


def _read(path) -> np.ndarray:
    image = mpimg.imread(path)[..., :3]  # RGB floats in [0, 1]
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "image is blank or nearly one colour"
    return image


def _pixel_box(fig, artist, height):
    """An artist's area as (row0, row1, col0, col1) in the saved PNG (display coords are at fig.dpi)."""
    box = artist.get_window_extent()
    s = DPI / fig.dpi
    return int(height - box.y1 * s), int(height - box.y0 * s), int(box.x0 * s), int(box.x1 * s)


def _has_colour(pixels, rgb, tol=0.03) -> bool:
    return bool((np.abs(pixels - np.array(rgb)).max(-1) < tol).any())


def test_training_curves_draw_both_series_in_both_panels(tmp_path, kept_figures):
    records = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc": 0.8 + e / 100,
                "val_acc": 0.78 + e / 100} for e in (1, 2, 3)]
    path = plots.training_curves(records, tmp_path / "curves.png", "cnn")
    image = _read(path)
    assert image.shape[:2] == (round(3.8 * DPI), round(10 * DPI))
    fig = kept_figures[0]
    for ax in fig.axes:  # loss, accuracy: train (C0) and validation (C1) lines in each
        image_without_legend = image.copy()
        l0, l1, k0, k1 = _pixel_box(fig, ax.get_legend(), image.shape[0])
        image_without_legend[l0:l1, k0:k1] = 1.0  # its line samples are drawn even for empty series
        r0, r1, c0, c1 = _pixel_box(fig, ax, image.shape[0])
        panel = image_without_legend[r0:r1, c0:c1]
        assert _has_colour(panel, C0_BLUE) and _has_colour(panel, C1_ORANGE), ax.get_title()


def _cell_darkness(image, fig, ax, row, col):
    """Mean darkness of cell (row, col) of an imshow, sampled off-centre to miss its count label."""
    s = DPI / fig.dpi
    x, y = ax.transData.transform((col + 0.3, row - 0.3))
    px, py = int(x * s), int(image.shape[0] - y * s)
    return 1 - image[py - 1:py + 2, px - 1:px + 2].mean()


def test_confusion_plot_is_dark_on_the_diagonal_and_rows_are_true_classes(tmp_path, kept_figures):
    cm = torch.full((10, 10), 2, dtype=torch.long)
    cm.fill_diagonal_(980)
    cm[0, 9] = 300  # true 0 predicted as 9 often; true 9 as 0 only twice
    image = _read(plots.confusion(cm, tmp_path / "confusion.png", "cnn"))
    assert image.shape[:2] == (round(5 * DPI), round(5.6 * DPI))
    fig = kept_figures[0]
    ax = fig.axes[0]
    diagonal = [_cell_darkness(image, fig, ax, i, i) for i in range(10)]
    off = {(i, j): _cell_darkness(image, fig, ax, i, j) for i in range(10) for j in range(10) if i != j}
    assert min(diagonal) > max(v for k, v in off.items() if k != (0, 9)) + 0.3
    # Row 0 (true 0) column 9 (predicted 9) is the dark off-diagonal cell, not its transpose.
    assert off[(0, 9)] > off[(9, 0)] + 0.2
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"


def _grid_case(wrong):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(60) % 10
    preds = labels.clone()
    preds[list(wrong)] = (labels[list(wrong)] + 1) % 10
    probs = torch.full((60, 10), 0.05)
    probs[torch.arange(60), preds] = 0.55
    return images, labels, preds, probs


def _red_on_frame(image, fig, ax, width=3) -> bool:
    r0, r1, c0, c1 = _pixel_box(fig, ax, image.shape[0])
    frame = np.concatenate([image[r0 - width:r0 + width, c0:c1].reshape(-1, 3),
                            image[r1 - width:r1 + width, c0:c1].reshape(-1, 3),
                            image[r0:r1, c0 - width:c0 + width].reshape(-1, 3),
                            image[r0:r1, c1 - width:c1 + width].reshape(-1, 3)])
    red = (frame[:, 0] > 0.8) & (frame[:, 1] < 0.2) & (frame[:, 2] < 0.2)
    return red.sum() > 20


@pytest.mark.parametrize("wrong", [(), (3, 17, 42)], ids=["all-right", "three-wrong"])
def test_prediction_grid_frames_exactly_the_misclassified_digits_in_red(tmp_path, kept_figures, wrong):
    # 60 images fill the 6 x 10 grid, so grid cell k shows test image k.
    images, labels, preds, probs = _grid_case(wrong)
    image = _read(plots.prediction_grid(images, labels, preds, probs, tmp_path / "predictions.png", "cnn"))
    assert image.shape[:2] == (round(6 * 1.25 * DPI), round(10 * 1.05 * DPI))
    fig = kept_figures[0]
    framed = [k for k, ax in enumerate(fig.axes[:60]) if _red_on_frame(image, fig, ax)]
    assert framed == list(wrong)
    red = (image[..., 0] > 0.8) & (image[..., 1] < 0.2) & (image[..., 2] < 0.2)
    assert red.any() == bool(wrong)  # no red anywhere when every prediction is right


def test_run_plots_writes_the_three_files(tmp_path, kept_figures):
    images, labels, preds, probs = _grid_case((5,))
    records = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "train_acc": 0.9, "val_acc": 0.88}]
    cm = torch.eye(10, dtype=torch.long) * 6
    paths = plots.run_plots(tmp_path, records, cm, images, labels, preds, probs, title="cnn")
    assert [p.name for p in paths] == ["curves.png", "confusion.png", "predictions.png"]
    for p in paths:
        _read(p)
