"""Tasks and data: the embedded Countdown world (SPEC §7)."""

from dora_jax.data.countdown import (MAX_NUMBER, MAX_RESPONSE_LEN, MAX_TARGET, NUM_NUMBERS, NUM_TEMPLATES, PROMPT_LEN,
                                     RARE_MAX_WEIGHT, SFT_WEIGHTS, TEMPLATES, TOKENIZER, Problem, Template, Tokenizer,
                                     describe, encode_prompts, evaluate, make_problems, prompt_text, rare_only_fraction,
                                     render, sft_corpus, solutions, solvable_matrix, split)

__all__ = ["MAX_NUMBER", "MAX_RESPONSE_LEN", "MAX_TARGET", "NUM_NUMBERS", "NUM_TEMPLATES", "PROMPT_LEN",
           "RARE_MAX_WEIGHT", "SFT_WEIGHTS", "TEMPLATES", "TOKENIZER", "Problem", "Template", "Tokenizer", "describe",
           "encode_prompts", "evaluate", "make_problems", "prompt_text", "rare_only_fraction", "render", "sft_corpus",
           "solutions", "solvable_matrix", "split"]
