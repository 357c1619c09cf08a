"""A saved SANE checkpoint carries its code: it loads with trust_remote_code=True without hyperrep_hf."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from hyperrep_hf import SaneConfig, SaneModel

# Runs in a fresh interpreter: hyperrep_hf is made unimportable (the editable install puts it on
# the path), then only transformers/torch and the code files next to the weights remain.
REMOTE_LOAD = textwrap.dedent(
    """
    import importlib.abc
    import importlib.util
    import sys

    class HideHyperrep(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hyperrep_hf" or name.startswith("hyperrep_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, HideHyperrep())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    try:
        import hyperrep_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("hyperrep_hf is still importable")

    import torch
    from transformers import AutoConfig, AutoModel

    checkpoint, io_path = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    assert "hyperrep_hf" not in type(model).__module__, type(model).__module__
    assert type(model).__name__ == "SaneModel" and type(config).__name__ == "SaneConfig"
    assert not any(name.startswith("hyperrep_hf") for name in sys.modules)
    io = torch.load(io_path)
    out = model(io["tokens"], io["positions"], io["mask"], targets=io["tokens"], num_views=2)
    # the same weights and code: equal up to float rounding (a process with another thread count or
    # state may take other CPU kernels, e.g. on AVX2)
    torch.testing.assert_close(out.latents, io["latents"], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.layer_sigma, io["layer_sigma"])
    assert abs(out.loss.item() - io["loss"]) < 1e-5 * max(1.0, abs(io["loss"])), (out.loss.item(), io["loss"])
    print("remote ok", type(model).__module__)
    """
)


def test_checkpoint_loads_with_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    config = SaneConfig.from_preset("tiny", token_size=9, d_model=32, latent_dim=8, window_size=6, max_positions=(16, 4, 8))
    model = SaneModel(config).eval()
    model.set_layer_sigma([0.5, 2.0])
    model.save_pretrained(tmp_path / "ckpt")
    saved = sorted(os.listdir(tmp_path / "ckpt"))
    assert {"configuration_sane.py", "modeling_sane.py", "losses.py", "model.safetensors"} <= set(saved)
    auto_map = json.loads((tmp_path / "ckpt" / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_sane.SaneConfig", "AutoModel": "modeling_sane.SaneModel"}
    # The copied model code imports only torch, transformers and its copied siblings.
    for name in ("modeling_sane.py", "configuration_sane.py", "losses.py"):
        lines = (tmp_path / "ckpt" / name).read_text().splitlines()
        imported = {line.split()[1].split(".")[0] or "." for line in lines if line.startswith(("import ", "from "))}
        assert imported <= {"__future__", "dataclasses", "torch", "transformers", "."}, (name, imported)

    tokens = torch.randn(4, 6, 9)
    positions = torch.stack([torch.arange(6), torch.arange(6) // 3, torch.arange(6) % 3], -1).expand(4, 6, 3)
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    out = model(tokens, positions, mask, targets=tokens, num_views=2)
    torch.save(
        {"tokens": tokens, "positions": positions, "mask": mask, "latents": out.latents,
         "layer_sigma": model.layer_sigma, "loss": out.loss.item()},
        tmp_path / "io.pt",
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(tmp_path / "ckpt"), str(tmp_path / "io.pt")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "remote ok transformers_modules." in result.stdout


def test_the_code_a_checkpoint_carries_needs_only_a_plain_transformers_install():
    from transformers.dynamic_module_utils import get_imports

    from hyperrep_hf.remote_code import MODULES, check_remote_code, remote_sources

    sources = remote_sources()
    assert set(sources) == set(MODULES.values())
    check_remote_code(sources)
    for name, source in sources.items():
        assert "from .." not in source, name  # flat: transformers loads remote code from the repo's top level
    allowed = {"torch", "transformers", "safetensors", "numpy"}
    with tempfile.TemporaryDirectory() as tmp:  # what transformers' own check reads
        for name, source in sources.items():
            (Path(tmp) / name).write_text(source)
            assert set(get_imports(Path(tmp) / name)) - set(sys.stdlib_module_names) <= allowed, name
    broken = {**sources, "probes.py": sources["probes.py"] + "\nimport scipy\n"}
    with pytest.raises(RuntimeError, match=r"probes.py imports \['scipy'\] outside a try block"):
        check_remote_code(broken)
    with pytest.raises(RuntimeError, match="imports .alignment, which a checkpoint does not carry"):
        check_remote_code({**sources, "probes.py": "from .alignment import align\n"})
