"""Dora, the released code's contrastive variant (psi = pi_ref e^{tau A} / beta), initialised from Nora.

    python launch/train.py --config=configs/contrastive.py [--workdir=runs/contrastive]
"""

from configs import common, indicator


def get_config(arg=None):
    c = indicator.get_config(arg)
    c.objective = common.objective("dora_contrastive", keep=c.objective)
    c.objective.psi_form = "ref_weighted"
    return c
