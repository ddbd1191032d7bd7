"""scratchvision: multi-scale and deformable vision operators built from scratch.

Each heavy operator (``scratchvision.ops``) exists in four tiers that compute the same
function -- explicit loops, vectorised NumPy, Numba CPU and numba.cuda -- with a hand-written
backward pass proved right by finite differences (``scratchvision.gradcheck``).
"""

from ._dispatch import BackendUnavailableError, TIERS, tier_status
from .gradcheck import gradcheck

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "TIERS", "tier_status", "gradcheck", "__version__"]
