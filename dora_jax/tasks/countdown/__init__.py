"""The embedded Countdown world: problem generator and tokenizer, verifier, task."""
