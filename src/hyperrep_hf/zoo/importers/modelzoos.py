"""Model Zoos (Schürholt et al. 2022): Ray Tune trial folders, as a folder, an archive or a Hub path.

    ROOT/<trial>/params.json (or config.json)    the trial's config ("model::nlin", "optim::lr", "seed", ...)
    ROOT/<trial>/result.json                     JSON lines, one per training_iteration (train_acc, test_acc, ...)
    ROOT/<trial>/checkpoint_000012/checkpoints   torch state_dict after epoch 12 (checkpoint_12 too; 0: initial state)
    ROOT/<trial>/checkpoint_000012/optimizer     ignored

ROOT is a folder, a `.tar` / `.tar.gz` / `.zip` (members are read one by one, never unpacked), or a
path in a Hub repo (`hf://datasets/org/name/path`, or repo + path_in_repo: only that path is
downloaded). A trial's tensors are matched to the architecture by order and shape, never by name:
the published CNN-s keys shift with dropout (module_list.0/3/6/9/11 vs 0/4/8/11/14) within one zoo.
A result line's training_iteration is the checkpoint number or one more (when the trainable logged
the initial model as iteration 1); the offset is detected and checked on every trial.
The preprocessed `dataset.pt` files are pickles of the authors' classes and are never loaded.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ...layout import WeightLayout
from ..architectures import ACTIVATIONS, architecture_builder, build_model
from ..dataset import STANDARD_COLUMNS
from .state_dicts import flatten_state_dict, torch_state_dict
from .writer import model_splits, write_zoo

# params.json keys of the published zoos -> zoo columns
PARAM_KEYS = {
    "seed": "seed",
    "model::nlin": "activation",
    "model::init_type": "init",
    "optim::optimizer": "optimizer",
    "optim::lr": "lr",
    "optim::wd": "weight_decay",
    "model::dropout": "dropout",
    "optim::momentum": "momentum",
}
# model::type of the published zoos -> registered architecture
MODEL_TYPES = {"CNN": "cnn-s", "CNN3": "cnn-l", "Resnet18": "resnet18"}
CONFIG_FILES = ("params.json", "config.json")
CHECKPOINT = re.compile(r"checkpoint_(\d+)$")
EXPECTS = "<trial>/params.json (or config.json), <trial>/result.json and <trial>/checkpoint_NNNNNN/checkpoints"


# --- where the zoo's files are: a folder, an archive, a Hub path ------------------------------


class FolderTree:
    """Files of a folder by relative posix name."""

    def __init__(self, root: Path):
        self.root, self.label = root, str(root)
        self.names = sorted(p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*"))

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def position(self, name: str) -> int:
        return 0

    def where(self, name: str) -> str:
        return str(self.root / name)


class TarTree:
    """Members of a .tar / .tar.gz, read one at a time (never extracted to disk), in archive order."""

    def __init__(self, path: Path):
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {m.name.removeprefix("./").rstrip("/") + ("/" if m.isdir() else ""): m for m in self.tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable tar archive ({err})") from err
        self.label, self.names = str(path), list(self.members)

    def read(self, name: str) -> bytes:
        f = self.tar.extractfile(self.members[name])
        if f is None:
            raise ValueError(f"{self.where(name)} is not a regular file")
        return f.read()

    def position(self, name: str) -> int:
        """Where the member lies: a compressed tar seeks backwards by decompressing from the start again,
        so readers read members in this order."""
        return self.members[name].offset

    def where(self, name: str) -> str:
        return f"{self.label}:{name}"


class ZipTree:
    def __init__(self, path: Path):
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{path}: not a readable zip archive ({err})") from err
        self.label, self.names = str(path), self.zip.namelist()

    def read(self, name: str) -> bytes:
        return self.zip.read(name)

    def position(self, name: str) -> int:
        return 0

    def where(self, name: str) -> str:
        return f"{self.label}:{name}"


def parse_hub_path(path: str) -> tuple[str, str, str]:
    """hf://datasets/org/name/inside (or hf://org/name/inside for a model repo) -> (repo_type, repo_id, inside)."""
    parts = path.removeprefix("hf://").strip("/").split("/")
    repo_type = "model"
    if parts[0] in ("datasets", "models", "spaces"):
        repo_type, parts = parts[0][:-1], parts[1:]
    if len(parts) < 2:
        raise ValueError(f"{path}: expected hf://datasets/org/name/path/inside (or hf://org/name/path for a model repo)")
    return repo_type, "/".join(parts[:2]), "/".join(parts[2:])


def download_hub_path(repo_id: str, path_in_repo: str = "", repo_type: str = "dataset", revision: str | None = None) -> Path:
    """Download only `path_in_repo` (a folder or a file) of a Hub repo; returns its local path."""
    from huggingface_hub import snapshot_download

    inside = path_in_repo.strip("/")
    patterns = [inside, f"{inside}/**"] if inside else None
    local = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns))
    target = local / inside if inside else local
    if not target.exists():
        raise FileNotFoundError(f"{repo_type} repo {repo_id} has no {inside!r}; give --path a folder or archive that is in the repo")
    return target


def open_tree(path: Path):
    """The zoo's files: a folder, a tar / tar.gz / zip archive. Pickled datasets are refused."""
    name = path.name.lower()
    if path.is_file() and name.endswith((".pt", ".pth", ".pkl", ".pickle")):
        raise ValueError(
            f"{path} is a preprocessed Model Zoos dataset (a pickle of the authors' dataset classes, which would run their code "
            "when loaded); hyperrep_hf never unpickles it. Download the raw zoo (the zip / tar of trial folders) and import that: "
            f"PATH must hold {EXPECTS}"
        )
    if path.is_dir():
        return FolderTree(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a folder, .tar, .tar.gz or .zip of Model Zoos trials")
    if name.endswith(".zip"):
        return ZipTree(path)
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")):
        return TarTree(path)
    raise ValueError(f"{path}: not a folder, .tar, .tar.gz or .zip; a Model Zoos zoo is {EXPECTS}")


# --- trials ---------------------------------------------------------------------------------------


def find_trials(tree) -> list[dict]:
    """Trials in the tree's order: {"name", "config", "result", "checkpoints": [(epoch, member)]}."""
    names = set(tree.names)
    trials: dict[str, dict] = {}
    for name in tree.names:
        parts = PurePosixPath(name).parts
        for idx, part in enumerate(parts):
            m = CHECKPOINT.match(part)
            if m:
                trial = "/".join(parts[:idx])
                t = trials.setdefault(trial, {"name": trial, "dirs": {}})
                t["dirs"].setdefault("/".join(parts[: idx + 1]), int(m.group(1)))
                break
    if not trials:
        pickles = [n for n in tree.names if n.endswith(".pt")]
        hint = f" (it has {pickles[0]}: a pickled dataset, which is never loaded)" if pickles else ""
        raise ValueError(f"{tree.label} holds no trial folders{hint}: expected {EXPECTS}")
    out = []
    for trial, t in trials.items():
        prefix = f"{trial}/" if trial else ""
        config = next((prefix + c for c in CONFIG_FILES if prefix + c in names), None)
        if config is None:
            raise ValueError(f"{tree.where(trial or '.')} has checkpoint folders but neither params.json nor config.json (the trial's config)")
        by_epoch: dict[int, str] = {}
        for folder, epoch in sorted(t["dirs"].items(), key=lambda kv: kv[1]):
            member = f"{folder}/checkpoints"
            if member not in names:
                raise ValueError(f"{tree.where(member)} is missing: each checkpoint_NNNNNN folder needs a 'checkpoints' file (a torch state_dict)")
            if epoch in by_epoch:
                raise ValueError(f"{tree.where(trial)}: two checkpoint folders for epoch {epoch} ({by_epoch[epoch]} and {member}); keep one")
            by_epoch[epoch] = member
        out.append({"name": trial or PurePosixPath(tree.label).name, "config": config, "result": prefix + "result.json", "checkpoints": sorted(by_epoch.items())})
    return out


def read_json(texts: dict[str, bytes], tree, name: str) -> dict:
    try:
        d = json.loads(texts[name].decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{tree.where(name)}: cannot read it as JSON ({err})") from err
    if not isinstance(d, dict):
        raise ValueError(f"{tree.where(name)}: expected a JSON object")
    return d


METRIC_KEYS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "ggap", "loss")


def read_results(texts: dict[str, bytes], tree, name: str) -> dict[int, dict]:
    """result.json -> {training_iteration: metrics}; the key is "training_iteration" (Ray Tune), else "epoch"."""
    if name not in texts:
        raise ValueError(f"{tree.where(name)} is missing: every trial needs result.json (one JSON line per epoch)")
    out = {}
    for n, line in enumerate(texts[name].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{tree.where(name)}, line {n}: not a JSON line ({err})") from err
        it = rec.get("training_iteration", rec.get("epoch"))
        if it is None:
            raise ValueError(f"{tree.where(name)}, line {n}: has neither 'training_iteration' nor 'epoch'")
        out[int(it)] = {k: rec[k] for k in METRIC_KEYS if isinstance(rec.get(k), int | float)}
    return out


def result_offset(trials: list[dict], tree) -> int:
    """The offset o with training_iteration = checkpoint number + o (0 or 1), the same for every trial."""
    agreed: set[int] = {0, 1}
    for t in trials:
        epochs = [e for e, _ in t["checkpoints"]]
        fits = {o for o in (0, 1) if all(e + o in t["results"] for e in epochs)}
        if not fits:
            gaps = [f"checkpoint {next(e for e in epochs if e + o not in t['results'])} has no training_iteration {next(e for e in epochs if e + o not in t['results']) + o}" for o in (0, 1)]
            raise ValueError(
                f"{tree.where(t['result'])}: result lines do not cover the checkpoints (with offset 0: {gaps[0]}; with offset 1: {gaps[1]}); "
                "every checkpoint_N needs the line with training_iteration N, or N + 1 in every trial"
            )
        if not fits & agreed:
            raise ValueError(
                f"{tree.where(t['result'])}: its training_iteration values fit checkpoint numbers with offset {sorted(fits)}, "
                f"but the trials before it need offset {sorted(agreed)}; the trial belongs to another zoo or its result.json is damaged"
            )
        agreed &= fits
    return 1 if 1 in agreed else 0  # both fit only with extra result lines: the trainable logged the initial model first


def _column_name(key: str) -> str:
    return re.sub(r"\W+", "_", key).strip("_")


def config_columns(configs: list[dict]) -> dict[str, tuple[str, str]]:
    """Scalar config keys not mapped to standard columns -> (column name, type), typed over all trials."""
    keys: dict[str, list] = {}
    for cfg in configs:
        for k, v in cfg.items():
            if k not in PARAM_KEYS and (v is None or isinstance(v, bool | int | float | str)):
                keys.setdefault(k, []).append(v)
    out = {}
    for k, vs in keys.items():
        vs = [v for v in vs if v is not None]
        col = _column_name(k)
        if not vs or not col or col in PARAM_KEYS.values() or col in STANDARD_COLUMNS or col in {c for c, _ in out.values()} | {"source"}:
            continue
        typ = "bool" if all(isinstance(v, bool) for v in vs) else "int64" if all(isinstance(v, int) and not isinstance(v, bool) for v in vs) \
            else "float64" if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vs) else "string"
        out[k] = (col, typ)
    return out


def _activation(value):
    if value is None:
        return None
    name = str(value).lower()
    return {"leakyrelu": "leaky_relu"}.get(name, name)


def infer_architecture(tree, trial: dict, config: dict, architecture: str | None, architecture_kwargs: dict | None) -> tuple[str, dict]:
    """The registered architecture (and kwargs) of the zoo: given, from model::type, or by shapes."""
    given = dict(architecture_kwargs or {})
    first = trial["checkpoints"][0][1]
    if architecture is None:
        architecture = MODEL_TYPES.get(config.get("model::type"))
    candidates = [architecture] if architecture else ["cnn-s", "cnn-l", "resnet18"]
    shapes = None
    for name in candidates:
        accepted = inspect.signature(architecture_builder(name)).parameters
        kw = dict(given)
        if "in_channels" in accepted and "model::channels_in" in config:
            kw.setdefault("in_channels", int(config["model::channels_in"]))
        if "num_classes" in accepted and "model::o_dim" in config:
            kw.setdefault("num_classes", int(config["model::o_dim"]))
        if architecture:
            return name, kw
        if shapes is None:
            sd = torch_state_dict(tree.read(first), tree.where(first))
            shapes = [tuple(t.shape) for t in sd.values() if t.is_floating_point()]
        layout = WeightLayout.from_state_dict(build_model(name, **kw).state_dict())
        if [e.shape for e in layout.entries] == shapes:
            return name, kw
    raise ValueError(f"{tree.where(first)}: its tensor shapes match no Model Zoos architecture (cnn-s, cnn-l, resnet18); pass architecture= / --architecture")


def import_modelzoos(
    path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    architecture: str | None = None,
    architecture_kwargs: dict | None = None,
    task: str | None = None,
    seed: int = 0,
    repo: str | None = None,
    path_in_repo: str | None = None,
    repo_type: str = "dataset",
    revision: str | None = None,
    models_per_shard: int = 64,
    progress: bool = True,
):
    """Convert Model Zoos trials (folder, archive or Hub path) into a zoo dataset at `out_dir`; returns it loaded."""
    if repo is not None or str(path).startswith("hf://"):
        if repo is None:
            repo_type, repo, path_in_repo = parse_hub_path(str(path))
        local = download_hub_path(repo, path_in_repo or "", repo_type, revision)
        label = f"hf://{repo_type}s/{repo}/{(path_in_repo or '').strip('/')}"
    elif path is None:
        raise ValueError("give PATH (a folder or archive of Model Zoos trials) or --repo org/name [--path inside/the/repo]")
    else:
        local = Path(path)
        label = str(local.resolve())
    tree = open_tree(local)
    trials = find_trials(tree)
    present = set(tree.names)
    small = sorted((n for t in trials for n in (t["config"], t["result"]) if n in present), key=tree.position)
    texts = {n: tree.read(n) for n in small}  # configs and results: one forward pass through an archive
    for t in trials:
        t["params"] = read_json(texts, tree, t["config"])
        t["results"] = read_results(texts, tree, t["result"])
    offset = result_offset(trials, tree)
    architecture, kwargs = infer_architecture(tree, trials[0], trials[0]["params"], architecture, architecture_kwargs)
    layout = WeightLayout.from_state_dict(build_model(architecture, **kwargs).state_dict())
    takes_activation = "activation" in inspect.signature(architecture_builder(architecture)).parameters
    for t in trials:
        act = _activation(t["params"].get("model::nlin"))
        if takes_activation and act is not None and act not in ACTIVATIONS:
            raise ValueError(f"{tree.where(t['config'])}: activation {act!r} is not one of {sorted(ACTIVATIONS)}")
    extras = config_columns([t["params"] for t in trials])
    what = f"{architecture} {kwargs}"

    def read_trial(t: dict):
        """The trial's rows, one checkpoint at a time, in archive order (a compressed tar reads forwards only)."""
        p = t["params"]
        hp = {col: p.get(key) for key, col in PARAM_KEYS.items()}
        hp["activation"] = _activation(hp["activation"])
        for epoch, member in sorted(t["checkpoints"], key=lambda c: tree.position(c[1])):
            where = tree.where(member)
            flat = flatten_state_dict(torch_state_dict(tree.read(member), where), layout, where, what)
            rec = t["results"][epoch + offset]
            metrics = {m: rec.get(m) for m in METRIC_KEYS if m != "loss"}
            if metrics["train_loss"] is None:
                metrics["train_loss"] = rec.get("loss")
            yield {"epoch": epoch, "weights": flat, **metrics, **hp, **{col: p.get(k) for k, (col, _) in extras.items()}, "source": t["name"]}

    info = {
        "name": PurePosixPath(label.rstrip("/")).name,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "task": task or trials[0]["params"].get("dataset::name") or trials[0]["params"].get("dataset") or None,
        "config": {
            "source": "modelzoos",
            "path": label,
            "result_offset": offset,
            "params": trials[0]["params"],
            "description": f"Imported from the Model Zoos trial folders in {label}.",
        },
    }
    fingerprint = {"format": "modelzoos", "path": label, "revision": revision, "architecture": architecture, "kwargs": kwargs, "seed": seed, "models_per_shard": models_per_shard}
    return write_zoo(
        out_dir, info, trials, model_splits(len(trials), seed, tree.label), read_trial,
        layout=layout, extra_columns={"source": "string", **{col: typ for col, typ in extras.values()}},
        fingerprint=fingerprint, models_per_shard=models_per_shard, progress=progress, desc="import modelzoos",
    )


__all__ = ["import_modelzoos", "open_tree", "parse_hub_path", "download_hub_path"]
