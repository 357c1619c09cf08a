"""The code a SANE checkpoint carries, so it loads with plain transformers (`trust_remote_code=True`).

`write_remote_code(folder)` copies the modules that the model, the weight tokenizer and the three
pipelines need next to the checkpoint, as one flat folder (transformers loads remote code from the
top level of a repo), and writes the entries transformers reads:

    config.json                 auto_map (AutoConfig, AutoModel) and custom_pipelines (the three tasks)

(preprocessor_config.json names the tokenizer's class in its own auto_map, WeightTokenizer.to_dict.)

Imports between copied modules become flat relative imports (`from ..downstream.embedding import x`
-> `from .embedding import x`). What only the installed package can do (alignment with scipy, task
data for BatchNorm conditioning, evaluation) stays an absolute `hyperrep_hf` import inside a `try`
block, which transformers' import check skips; every copied file then imports only torch,
transformers, safetensors, numpy, the standard library and its siblings (`check_remote_code`).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from .files import atomic_write_json, atomic_write_text

PACKAGE = "hyperrep_hf"
ROOT = Path(__file__).resolve().parent
# package module -> its file name in a checkpoint (names are unique across subpackages)
MODULES: dict[str, str] = {
    "configuration_sane": "configuration_sane.py",
    "modeling_sane": "modeling_sane.py",
    "losses": "losses.py",
    "layout": "layout.py",
    "files": "files.py",
    "windows": "windows.py",
    "tokenization_weights": "tokenization_weights.py",
    "weightspace.permutation": "permutation.py",
    "weightspace.statistics": "statistics.py",
    "zoo.architectures": "architectures.py",
    "downstream.embedding": "embedding.py",
    "downstream.scores": "scores.py",
    "downstream.probes": "probes.py",
    "downstream.trees": "trees.py",
    "downstream.head": "head.py",
    "downstream.blend": "blend.py",
    "downstream.samplers": "samplers.py",
    "downstream.generative": "generative.py",
    "downstream.generation": "generation.py",
    "downstream.transfer": "transfer.py",
    "pipelines.weight_embedding": "weight_embedding.py",
    "pipelines.weight_property_prediction": "weight_property_prediction.py",
    "pipelines.weight_generation": "weight_generation.py",
}
AUTO_MAP = {"AutoConfig": "configuration_sane.SaneConfig", "AutoModel": "modeling_sane.SaneModel"}
# A checkpoint with a property head (config.json names `properties`) also loads it by this library's Auto class.
HEAD_AUTO_MAP = {"AutoModelForWeightPropertyPrediction": "modeling_sane.SaneForPropertyPrediction"}
CUSTOM_PIPELINES = {
    task: {"impl": f"{module}.{cls}", "pt": ["AutoModel"], "tf": [], "type": "multimodal"}
    for task, module, cls in (
        ("weight-embedding", "weight_embedding", "WeightEmbeddingPipeline"),
        ("weight-property-prediction", "weight_property_prediction", "WeightPropertyPredictionPipeline"),
        ("weight-generation", "weight_generation", "WeightGenerationPipeline"),
    )
}
# What a plain `pip install transformers torch` brings (plus the standard library).
ALLOWED_IMPORTS = frozenset({"torch", "transformers", "safetensors", "numpy"})
_RELATIVE = re.compile(r"^(\s*)from\s+(\.+)([\w.]*)\s+import\b", re.MULTILINE)


def _rewrite(module: str, source: str) -> str:
    """Relative imports of a package module -> flat sibling imports (or absolute package imports)."""
    package = f"{PACKAGE}.{module}".split(".")[:-1]

    def replace(match: re.Match) -> str:
        indent, dots, name = match.groups()
        base = package[: len(package) - (len(dots) - 1)]
        target = ".".join([*base, name] if name else base)
        inner = target.removeprefix(f"{PACKAGE}.")
        if inner in MODULES:
            return f"{indent}from .{MODULES[inner].removesuffix('.py')} import"
        return f"{indent}from {target} import"

    return _RELATIVE.sub(replace, source)


def remote_sources() -> dict[str, str]:
    """{file name: source} of every module a checkpoint carries."""
    return {name: _rewrite(module, (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
            for module, name in MODULES.items()}


def _top_level_imports(source: str) -> set[str]:
    """Absolute imports outside try blocks: what transformers' check_imports demands."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def check_remote_code(sources: dict[str, str]) -> None:
    """Raise if a copied file would need more than a plain transformers install or a missing sibling."""
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for name, source in sources.items():
        extra = _top_level_imports(source) - ALLOWED_IMPORTS - stdlib
        if extra:
            raise RuntimeError(f"remote-code file {name} imports {sorted(extra)} outside a try block; "
                               f"only {sorted(ALLOWED_IMPORTS)} and the standard library are allowed")
        for sibling in re.findall(r"^\s*from\s+\.(\S+)\s+import", source, flags=re.MULTILINE):
            if f"{sibling}.py" not in sources:
                raise RuntimeError(f"remote-code file {name} imports .{sibling}, which a checkpoint does not carry")


def write_remote_code(folder: str | Path) -> list[Path]:
    """Copy the checkpoint's code into `folder` and point config.json at it (auto_map, custom_pipelines).

    Returns the code files written. The trainer and `push_checkpoint` run it.
    """
    folder = Path(folder)
    sources = remote_sources()
    check_remote_code(sources)
    written = [atomic_write_text(folder / name, source) for name, source in sources.items()]
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        auto_map = {**AUTO_MAP, **(HEAD_AUTO_MAP if data.get("properties") else {})}
        atomic_write_json(config, {**data, "auto_map": auto_map, "custom_pipelines": CUSTOM_PIPELINES})
    return written


__all__ = ["CUSTOM_PIPELINES", "HEAD_AUTO_MAP", "MODULES", "check_remote_code", "remote_sources", "write_remote_code"]
