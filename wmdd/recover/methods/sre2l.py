"""SRe2L (Yin et al., NeurIPS 2023) as a WMDD ablation: no barycenter term,
cross-entropy of the teacher (weight 1) and global BatchNorm statistics."""

from __future__ import annotations

from wmdd.recover.methods.registry import register_method
from wmdd.recover.methods.wmdd import PAPER_DEFAULTS, WMDD


@register_method
class SRe2L(WMDD):
    """``--method sre2l``: SRe2L's recover loss (Yin et al., NeurIPS 2023; no equation number
    on record), CE + the global BN regulariser (WMDD Eq. 6 with one group), in WMDD's loop at
    the published settings (:data:`PAPER_DEFAULTS`) with CE weight 1, no barycenter (WMDD
    Table III's SRe2L row) and SRe2L's first-BN-layer weight 10; every WMDD option applies. The
    global BN statistics are exact, not SRe2L's BN running averages."""

    name = "sre2l"
    summary = "teacher cross-entropy + global BN statistics (SRe2L)"
    defaults = {**PAPER_DEFAULTS, "wb": False, "per_class_bn": False, "r_ce": 1.0, "first_bn_multiplier": 10.0}
