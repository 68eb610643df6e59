"""View-dependent prompt words: which of front / side / back a camera azimuth sees.

Why its own module, beside the stages sub-packages: the view words are shared by the guidance
(stages/priors: CFG suffixes, Perp-Neg's interpolation) and by the toy SD's training captions
(stages/toyworld/prior_training), which must use the same words; the toy world sits below the
priors (toy_exact is built from it), so it may not import stages.priors.
"""

from __future__ import annotations

VIEW_SUFFIXES = {"front": ", front view", "side": ", side view", "back": ", back view"}


def wrap_azimuth(azimuth_deg: float) -> float:
    """Any angle -> [-180, 180)."""
    return (float(azimuth_deg) + 180.0) % 360.0 - 180.0


def view_direction(azimuth_deg: float, front_angle_deg: float = 60.0, back_angle_deg: float = 60.0) -> str:
    """'front' within +-front/2 of azimuth 0, 'back' within +-back/2 of 180, else 'side'."""
    a = abs(wrap_azimuth(azimuth_deg))
    if a < front_angle_deg / 2.0:
        return "front"
    if a > 180.0 - back_angle_deg / 2.0:
        return "back"
    return "side"


def view_suffix(azimuth_deg: float, front_angle_deg: float = 60.0, back_angle_deg: float = 60.0) -> str:
    """', front view' | ', side view' | ', back view' for a camera azimuth (degrees, 0 = front)."""
    return VIEW_SUFFIXES[view_direction(azimuth_deg, front_angle_deg, back_angle_deg)]
