"""Fixtures shared by the picture tests."""
import pytest

from pyneuro.viz import plots


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures the plot functions create, left open (plt.close stubbed) so that their axes and
    geometry can be inspected after the function returned; closed at the end of the test."""
    figures, close = [], plots.plt.close
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for fig in figures:
        close(fig)
