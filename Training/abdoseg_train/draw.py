"""Which case (and which organ) a training patch is drawn from."""

from __future__ import annotations

import numpy as np

from .anatomy import AnatomyCase
from .negatives import NegativeCentres
from .prepared import PreparedCase

NO_ORGAN = 0  # the "organ" of a negative patch: centred far from every organ (``negatives.py``)


def draw_case(real: list[PreparedCase], synthetic: list[AnatomyCase], synthetic_fraction: float,
              rng: np.random.Generator, negative_fraction: float = 0.0,
              negatives: NegativeCentres | None = None,
              organs: frozenset[int] | None = None) -> tuple[PreparedCase | AnatomyCase, int | None]:
    """One training case and the organ to centre its patch on.

    The pool is synthetic with probability ``synthetic_fraction`` when there are both kinds.
    With probability ``negative_fraction`` the patch is a negative one: a case of the pool
    (maps without an organ too), drawn in proportion to its organ-free body
    (``negatives.weight``; uniformly when None), and ``NO_ORGAN``, a centre far from every
    organ. Otherwise the organ is drawn uniformly among those the pool labels, then a case
    that labels it: an organ labelled in few cases (the spleen in 2 of 16 anatomy maps) is as often in a patch
    as the liver; ``organs`` (ids) limits the choice to those (None: every organ). None when no
    case of the pool labels one of them.
    """
    pool = synthetic if synthetic and (not real or rng.random() < synthetic_fraction) else real
    if rng.random() < negative_fraction:
        if negatives is None:
            return pool[rng.integers(len(pool))], NO_ORGAN
        weights = np.array([negatives.weight(case) for case in pool])
        return pool[rng.choice(len(pool), p=weights / weights.sum())], NO_ORGAN
    organs = sorted({organ for case in pool for organ in _present(case) if organs is None or organ in organs})
    if not organs:
        return pool[rng.integers(len(pool))], None
    organ = organs[rng.integers(len(organs))]
    candidates = [case for case in pool if organ in _present(case)]
    return candidates[rng.integers(len(candidates))], organ


def _present(case: PreparedCase | AnatomyCase) -> frozenset[int]:
    """The organs a case labels that occur in its label map."""
    return frozenset(case.labelled) & case.organ_labels
