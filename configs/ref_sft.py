"""pi_ref: a small decoder trained by SFT on the embedded task's multi-strategy corpus.

    python launch/train.py --config=configs/ref_sft.py --workdir=runs/ref_sft

The corpus draws each problem's solutions from the templates that solve it, weighted
8,8,8,4,2,1,1,1,2,1, so the reference is multi-modal with some rare strategies. You rarely
run this by hand: `configs/indicator.py` builds it (and caches it) when it is missing.
"""

from configs import common


def get_config(arg=None):
    c = common.get_config()
    c.name = "ref"
    c.policy_init = "random"  # trained from scratch

    # Objective: masked next-token NLL of the response, on batches of 256 corpus examples.
    common.sft(c, arg, batch_size=256)

    # Optimizer
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.01

    # Trainer
    c.trainer.num_steps = 400  # ~8 epochs of the corpus; longer memorises the SFT problems and lowers held-out entropy
    c.trainer.checkpoint_every = 200
    c.eval.every = 100
    return common.finish(c, arg)
