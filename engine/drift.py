"""Drift measures: KL divergence and Jensen-Shannon distance between histograms.

The first piece of issue 3 (segmentation and drift). Pure functions over
counts, so the flow and the benchmarks can feed them however they bin.
Empty bins are smoothed (additive, Laplace-style) so KL never reaches
infinity; both inputs are normalised after smoothing.

Examples
--------
>>> round(kl_divergence([50, 50], [90, 10], smoothing=0.0), 4)  # 0.9 ln 1.8 + 0.1 ln 0.2
0.3681
>>> kl_divergence([1, 0], [0, 1]) < float("inf")
True
>>> round(js_distance([1, 0], [0, 1], smoothing=0.0), 4)
0.8326
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

#: Pseudo-count added to every bin before normalising.
DEFAULT_SMOOTHING = 0.5


def _distribution(counts: Sequence[float], smoothing: float) -> np.ndarray:
    values = np.asarray(counts, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"a histogram is a non-empty 1-d sequence of counts, got shape {values.shape}")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("histogram counts must be finite and >= 0")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    values = values + smoothing
    total = values.sum()
    if total <= 0:
        raise ValueError("a histogram with no counts has no distribution: add smoothing or data")
    return values / total


def _pair(reference, current, smoothing) -> tuple[np.ndarray, np.ndarray]:
    p = _distribution(current, smoothing)
    q = _distribution(reference, smoothing)
    if p.shape != q.shape:
        raise ValueError(f"histograms need the same bins: {q.size} reference vs {p.size} current")
    return p, q


def kl_divergence(
    reference: Sequence[float], current: Sequence[float], smoothing: float = DEFAULT_SMOOTHING
) -> float:
    """KL(current || reference) in nats: how surprising the current traffic is.

    ``smoothing`` pseudo-counts per bin keep the value finite when a bin is
    empty on one side.
    """
    p, q = _pair(reference, current, smoothing)
    return float(np.sum(rel_entr(p, q)))


def js_distance(
    reference: Sequence[float], current: Sequence[float], smoothing: float = DEFAULT_SMOOTHING
) -> float:
    """Jensen-Shannon distance (base e): symmetric, bounded by sqrt(ln 2)."""
    p, q = _pair(reference, current, smoothing)
    return float(jensenshannon(p, q))


def histogram(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the bins ``edges`` (outer bins catch everything beyond).

    >>> histogram([0.5, 1.5, 99.0, -3.0], [0.0, 1.0, 2.0]).tolist()
    [2, 2]
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be at least two strictly increasing numbers")
    clipped = np.clip(np.asarray(values, dtype=float), edges[0], np.nextafter(edges[-1], -np.inf))
    counts, _ = np.histogram(clipped, bins=edges)
    return counts
