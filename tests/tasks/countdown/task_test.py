"""The Countdown task object: token kinds and the validation split."""

import numpy as np

from dora_jax.tasks.countdown.task import CountdownConfig, CountdownTask


def test_token_kinds_mark_what_chooses_the_template():
    task = CountdownTask(CountdownConfig(num_problems=200))
    ids = task.tokenizer.encode("( 3 + 4 ) * 5") + [task.tokenizer.eos_id, task.pad_id]
    names = [task.token_kind_names[k] if k >= 0 else None for k in task.token_kinds(np.array(ids))]
    assert names == ["parenthesis", "number", "operator", "number", "parenthesis", "operator", "number", "end", None]


def test_a_validation_split_is_carved_from_the_rl_problems_only():
    plain = CountdownTask(CountdownConfig(num_problems=400))
    held = CountdownTask(CountdownConfig(num_problems=400, validation_problems=30))
    assert held.splits["validation"] + held.splits["rl"] == plain.splits["rl"][-30:] + plain.splits["rl"][:-30]
    assert held.splits["eval"] == plain.splits["eval"] and held.splits["sft"] == plain.splits["sft"]
    assert "validation" not in plain.splits
    assert held.rare_only(held.splits["validation"]).shape == (30,)


def test_every_registered_task_resolves_to_its_classes():
    from dora_jax import tasks
    for name in tasks.TASKS:  # the registry names modules as strings: a typo shows here, not in a user's run
        task_class = tasks.task_class(name)
        assert task_class.__name__ == tasks.TASKS[name][1]
        assert type(tasks.parse_config(tasks.default_config(name))).__name__ == tasks.TASKS[name][2]
