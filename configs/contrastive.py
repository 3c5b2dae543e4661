"""Dora, the released code's contrastive variant (psi = pi_ref e^{tau A} / beta), initialised from Nora.

    python launch/train.py --config=configs/contrastive.py [--workdir=runs/contrastive]
"""

from configs import common, indicator

# indicator's variants that keep this objective (the others replace the loss, psi, the advantage or its reward).
VARIANTS = ("side_by_side", "beta_sweep", "from_ref", "handover")


def get_config(arg=None):
    common.check_variants(arg, VARIANTS)
    c = indicator.get_config(arg)
    c.objective = common.objective("dora_contrastive", keep=c.objective)
    c.objective.psi_form = "ref_weighted"
    return c
