"""HF <-> dora_jax checkpoint conversion through the `launch/convert.py` command line."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import transformers

from dora_jax.models import checkpoint, hf
from tests import hf_models

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "convert.py"), *args], check=True,
                          capture_output=True, text=True)


def test_hf_to_checkpoint_to_hf(tmp_path):
    src, ckpt, back = (str(tmp_path / n) for n in ("hf", "ckpt", "back"))
    model = hf_models.build("llama", src)
    written = _run(f"--src={src}", f"--dst={ckpt}")
    # Launchers hide the checkpoint library's INFO lines (absl format "I1123 19:06:59.77 ...") unless -v is given.
    assert not re.search(r"^I\d{4} ", written.stderr, re.M), written.stderr[:2000]
    lm = checkpoint.load(ckpt)
    assert lm.config == hf.load(src).config
    _run(f"--src={ckpt}", f"--dst={back}")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(back, attn_implementation="eager").eval()
    ids = np.arange(12).reshape(2, 6) + 3
    np.testing.assert_allclose(hf_models.torch_logits(reloaded, ids), hf_models.torch_logits(model, ids), atol=1e-6)


def test_convert_rejects_unknown_dir(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as e:
        _run(f"--src={tmp_path}", f"--dst={tmp_path / 'x'}")
    assert "neither a Hugging Face model dir" in e.value.stderr
