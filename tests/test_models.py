"""Model resolution: embedded (GGUF -> safetensors), local folder, hub id (up to the download)."""
import os
import subprocess
import sys

import pytest
import torch

from mumath.models import ModelNotFoundError, embedded_gguf_path, resolve_model_path


def test_converted_model_matches_the_gguf_logits(embedded_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    ids = tokenizer("Natalia sold clips to 48 of her friends in April.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = reference(ids).logits, converted(ids).logits
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    assert not hasattr(converted.config, "quantization_config")


def test_embedded_resolves_to_the_cached_folder(embedded_dir):
    assert resolve_model_path("embedded") == str(embedded_dir)
    assert (embedded_dir / "model.safetensors").exists()


def test_local_folder(embedded_dir, tmp_path):
    assert resolve_model_path(str(embedded_dir)) == str(embedded_dir)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))


def test_hub_id_offline_fails_naming_the_id():
    code = ("from mumath.models import load_tokenizer\n"
            "try:\n    load_tokenizer('mumath-test/no-such-model')\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "ModelNotFoundError" in out and "mumath-test/no-such-model" in out


def test_empty_spec():
    with pytest.raises(ModelNotFoundError, match="'model' is empty"):
        resolve_model_path("")
