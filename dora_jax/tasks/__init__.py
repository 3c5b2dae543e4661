"""Tasks as the pipeline sees them: splits, prompts, rewards and strategy labels in one object.

    c.task = default_config("countdown")       # in a config: the task's own section, by name
    task = make_task(config.task)
    prompt_BxP, mask_BxP = task.prompts(problems)
    rewards_B, valid_B, strategy_B = task.score(problems, response_BxN)   # G responses per problem

The embedded Countdown world (docs/design.md §7) is the default; `math` reads DeepScaleR / AIME-format
files (`dora_jax.tasks.math`). A task is a class with these members and a config section; a new one is
registered in TASKS.
"""

import importlib

import ml_collections

from dora_jax import sections

# name -> (module, task class, config class). A task's module is imported when a config names it, so importing
# one part of a task (e.g. the math grader, in each of its worker processes) does not import every task's
# dependencies (grain, transformers).
TASKS = {"countdown": ("dora_jax.tasks.countdown.task", "CountdownTask", "CountdownConfig"),
         "math": ("dora_jax.tasks.math.task", "MathTask", "MathConfig"),
         "word_problems": ("dora_jax.tasks.word_problems", "WordProblemsTask", "WordProblemsConfig")}


def _entry(name: str):
    """(task class, config class) of task `name`."""
    if name not in TASKS:
        raise sections.ConfigError(f"config.task.name={name!r} is not a known task; use one of {', '.join(TASKS)}.")
    module_name, task, config = TASKS[name]
    module = importlib.import_module(module_name)
    return getattr(module, task), getattr(module, config)


def default_config(name: str = "countdown") -> ml_collections.ConfigDict:
    """The `task` section of task `name` with its defaults."""
    return sections.defaults(_entry(name)[1])


def parse_config(section):
    """The typed, checked `task` section (its `name` picks the task's config class)."""
    return sections.parse(_entry(section.name)[1], section, "task")


def task_class(name: str):
    return _entry(name)[0]


def make_task(cfg):
    return task_class(cfg.name)(parse_config(cfg))
