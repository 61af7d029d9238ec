"""Effective mutual information (EMI), its drop (EMID), and the JSD upper bound on that drop.

EMI(P) = I(X; Y_hat) - I(X; Y): how much the model's answers depend on the query, relative to how
much reference answers do. EMID = EMI(P) - EMI(Q), positive when live data Q is worse than ID
data P. arXiv 2502.00577 bounds it by

    entropy_scaled:  H * (sqrt(JSD_v) + sqrt(JSD_t)) + 4 * (JSD_out_id^(1/4) + JSD_out_live^(1/4))
    scale_adjusted:       sqrt(JSD_v) + sqrt(JSD_t)  +     JSD_out_id^(1/4) + JSD_out_live^(1/4)

A term that cannot be computed (no images in the window, no references) is None: the bound is
then the sum of the available terms, flagged incomplete, never a silent 0. The bound records
the JSD mode its terms were computed in (``jsd_mode``): values of the two modes differ when the
compared sets differ in size, so a bound is only comparable with bounds (and nulls) of its mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from monitor.errors import InvalidInputError
from monitor.estimators.arrays import ArrayLike
from monitor.estimators.club import CLUB
from monitor.estimators.rjsd import JSDMode
from monitor.records import TERMS

BoundForm = Literal["scale_adjusted", "entropy_scaled"]
BOUND_FORMS: tuple[BoundForm, ...] = ("scale_adjusted", "entropy_scaled")

# JSD is >= 0 in exact arithmetic; allow rounding noise below 0, reject real negatives.
_NEGATIVE_JSD_TOLERANCE = 1e-9


def emi(club: CLUB, x: ArrayLike, y_hat: ArrayLike, y: ArrayLike) -> float:
    """EMI = I(x; y_hat) - I(x; y) on one set of paired rows, both MIs by the same CLUB."""
    model_mi, reference_mi = club.estimate_many(x, [y_hat, y])
    return model_mi - reference_mi


def emid(
    club: CLUB,
    id_x: ArrayLike,
    id_y_hat: ArrayLike,
    id_y: ArrayLike,
    live_x: ArrayLike,
    live_y_hat: ArrayLike,
    live_y: ArrayLike,
) -> float:
    """EMID = EMI(ID) - EMI(live); positive means the model does worse on live data."""
    return emi(club, id_x, id_y_hat, id_y) - emi(club, live_x, live_y_hat, live_y)


@dataclass(frozen=True)
class UpperBound:
    """The EMID upper bound and the contribution of each term (None where not computable)."""

    value: float | None
    form: BoundForm
    entropy_scale: float
    terms: dict[str, float | None]
    jsd_mode: JSDMode | None = None  # the mode of the JSD terms; None when not stated

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(name for name in TERMS if self.terms[name] is None)

    @property
    def complete(self) -> bool:
        return not self.missing


def emid_upper_bound(
    jsd_v: float | None,
    jsd_t: float | None,
    jsd_out_id: float | None,
    jsd_out_live: float | None,
    *,
    form: BoundForm = "scale_adjusted",
    entropy_scale: float = 1.0,
    jsd_mode: JSDMode | None = None,
) -> UpperBound:
    """The EMID upper bound from the four JSD terms; see the module docstring for both forms.

    ``entropy_scale`` is H of the entropy-scaled form; the scale-adjusted form fixes H = 1.
    ``jsd_mode`` is recorded on the result (the mode the terms were computed in).
    """
    if form not in BOUND_FORMS:
        raise InvalidInputError(
            f"unknown bound form {form!r}; expected one of {BOUND_FORMS}", field="form"
        )
    if not (math.isfinite(entropy_scale) and entropy_scale > 0):
        raise InvalidInputError(
            f"entropy_scale must be a positive number, got {entropy_scale}", field="entropy_scale"
        )
    if form == "scale_adjusted" and entropy_scale != 1.0:
        raise InvalidInputError(
            "the scale_adjusted form has H = 1; pass form='entropy_scaled' to use entropy_scale",
            field="entropy_scale",
        )
    input_factor, output_factor = (1.0, 1.0) if form == "scale_adjusted" else (entropy_scale, 4.0)
    raw = dict(zip(TERMS, (jsd_v, jsd_t, jsd_out_id, jsd_out_live), strict=True))
    terms: dict[str, float | None] = {}
    for name, value in raw.items():
        if value is None:
            terms[name] = None
            continue
        jsd = _checked_jsd(value, name)
        if name in ("visual", "text"):
            terms[name] = input_factor * math.sqrt(jsd)
        else:
            terms[name] = output_factor * jsd**0.25
    present = [t for t in terms.values() if t is not None]
    return UpperBound(
        value=sum(present) if present else None,
        form=form,
        entropy_scale=entropy_scale,
        terms=terms,
        jsd_mode=jsd_mode,
    )


def _checked_jsd(value: float, name: str) -> float:
    jsd = float(value)
    if not math.isfinite(jsd):
        raise InvalidInputError(f"JSD term {name!r} is not finite: {value}", field=name)
    if jsd < -_NEGATIVE_JSD_TOLERANCE:
        raise InvalidInputError(f"JSD term {name!r} is negative: {value}", field=name)
    return max(jsd, 0.0)
