"""Figures show their whole titles: a long run, data or split name is wrapped, never cut off at the edges."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.evaluation import figures

LONG = ("chest_xray_kermany_224_lite0-auto-20261207-015634 on ext_xray_normal_viral_from_another_hospital_2024 "
        "(test)")


@pytest.fixture
def kept(monkeypatch):
    """The figures the plotting functions draw, kept open after they are written."""
    drawn, close = [], figures.plt.close
    monkeypatch.setattr(figures.plt, "close", lambda fig: drawn.append(fig))
    yield drawn
    for fig in drawn:
        close(fig)


def _inside(fig, artist) -> bool:
    renderer = fig.canvas.get_renderer()
    box, page = artist.get_window_extent(renderer), fig.bbox
    return (box.x0 >= page.x0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y0 >= page.y0 - 0.5
            and box.y1 <= page.y1 + 0.5)


def _titles(fig) -> list:
    return [t for t in [fig._suptitle, *(ax.title for ax in fig.axes)] if t is not None and t.get_text()]


def test_long_titles_of_roc_decision_curve_and_reliability_fit_inside_the_figure(kept, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    probs = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    figures.plot_roc(tmp_path / "roc.png", y, probs, ["NORMAL", "PNEUMONIA"], 0.5, LONG)
    pt = np.linspace(0.01, 0.99, 50)
    curves = {"threshold": pt, "model": 0.4 - 0.3 * pt, "treat_all": 0.5 - pt, "treat_none": 0 * pt}
    figures.plot_decision_curve(tmp_path / "decision_curve.png", curves, 0.5, LONG)
    cal = {"ece": 0.166, "brier": 0.144, "bins": [[0.2, 0.3, 10], [0.7, 0.6, 20]]}
    split = {"n": 600, "calibration": cal, "confusion_matrix": [[1, 2], [3, 4]]}
    figures.plot_reliability(tmp_path / "reliability.png",
                             {"val": split, "test": split, "test_deduplicated_at_another_site": split}, LONG)
    assert len(kept) == 3 and all((tmp_path / n).is_file() for n in ("roc.png", "decision_curve.png",
                                                                     "reliability.png"))
    assert all("\n" in fig._suptitle.get_text() for fig in kept[:2])  # too long for one line: wrapped
    for fig in kept:
        titles = _titles(fig)
        assert "".join(titles[0].get_text().split()).startswith("".join(LONG.split()))  # every character kept
        for title in titles:
            assert _inside(fig, title), (title.get_text(), title.get_window_extent(), fig.bbox)


def test_a_short_title_stays_on_one_line(kept, tmp_path):
    y = np.array([0, 1, 0, 1])
    figures.plot_roc(tmp_path / "roc.png", y, np.array([0.1, 0.9, 0.4, 0.6]), ["a", "b"], 0.5, "run1 (test)")
    (fig,) = kept
    assert fig._suptitle.get_text() == "run1 (test): ROC (n=4)" and _inside(fig, fig._suptitle)
