"""Dora, paper Formulation 1 (clipped log-ratio), initialised from Nora.

    python launch/train.py --config=configs/clipped.py [--workdir=runs/clipped]

Same pipeline and report as configs/indicator.py, so the two formulations compare side by side.
"""

from configs import common, indicator

# indicator's variants that keep this objective (the others replace the loss, the advantage or its reward).
VARIANTS = ("side_by_side", "beta_sweep", "signed", "from_ref", "handover")


def get_config(arg=None):
    common.check_variants(arg, VARIANTS)
    c = indicator.get_config(arg)
    c.objective = common.objective("dora_clipped", keep=c.objective)  # c_t = min(max(lR - lN, -delta), lR + A / beta)
    c.objective.credit = "token"
    return c
