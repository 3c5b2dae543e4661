"""Tasks as the pipeline sees them: splits, prompts, rewards and strategy labels in one object.

    task = make_task(config.task)
    prompt_BxP, mask_BxP = task.prompts(problems)
    rewards_B, valid_B, strategy_B = task.score(problems, response_BxN)   # G responses per problem

The embedded Countdown world (docs/design.md §7) is the default; `math` reads DeepScaleR / AIME-format
files (`dora_jax.tasks.math`). A task is anything with these members; a new one is registered in TASKS.
"""

from dora_jax.tasks.countdown.task import CountdownTask
from dora_jax.tasks.math.task import MathTask

TASKS = {"countdown": CountdownTask, "math": MathTask}


def make_task(cfg):
    if cfg.name not in TASKS:
        raise ValueError(f"config.task.name={cfg.name!r} is not a known task; use one of {', '.join(TASKS)}.")
    return TASKS[cfg.name](cfg)
