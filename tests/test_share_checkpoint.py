"""A checkpoint shared by repo id is the whole product: `hyperrep push` uploads a trained checkpoint
folder whole, in one commit, to the local test Hub (tests/hub_server.py); fresh processes with empty
caches then use it by repo id, with hyperrep_hf (Auto classes, the three pipelines with BatchNorm
conditioning on the zoo's task, the CLI, load_zoo and plain load_dataset, revision pinning, offline
from the cache, through an olah mirror) and without it (plain transformers + torch, trust_remote_code)."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard, hf_hub_download
from safetensors.torch import save_file
from transformers import pipeline

from hyperrep_hf import WeightTokenizer
from hyperrep_hf.cli import main as cli
from hyperrep_hf.downstream.evaluation import fit_probes
from hyperrep_hf.downstream.generation import (
    ModelGenerator,
    prepare_sampling,
    train_generative_sampler,
)
from hyperrep_hf.hub import push_checkpoint
from hyperrep_hf.training import SaneTrainingArguments, train_sane
from hyperrep_hf.zoo import build_zoo, push_zoo

# A narrow ResNet-18 (BatchNorm: sampling conditions it on the zoo's task) on scikit-learn digits.
ZOO_SPEC = {
    "description": "Narrow ResNet-18 seed zoo on digits (sharing tests).",
    "architecture": "resnet18", "architecture_kwargs": {"in_channels": 1, "width": 2}, "task": "digits",
    "hyperparameters": {"init": ["kaiming_uniform"], "optimizer": ["adam"], "lr": [1e-3]},
    "num_models": 6, "epochs": 1,
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, hub_server):
    """A trained checkpoint with probes and anchors pushed with push_checkpoint (commit `first`), its
    probes then refitted on test_acc only and pushed again (commit `second`, main), its zoo pushed
    with push_zoo, and what the local folder gives for the same inputs (io.pt)."""
    root = tmp_path_factory.mktemp("shared")
    zoo = build_zoo(ZOO_SPEC, root / "zoo", progress=False)
    folder = root / "sane-digits"
    train_sane(SaneTrainingArguments(zoo=[str(zoo.path)], output_dir=str(folder), preset="tiny", epochs=1,
                                     batch_size=4, report_to=["tensorboard"], progress=False))
    fit_probes(zoo, "sane", folder, properties=["test_acc", "epoch"], permutations=0).save(folder)
    prepare_sampling(folder, zoo, progress=False, bandwidth_scale=0.25)  # the choice on validation: tested elsewhere
    gen = ModelGenerator.from_pretrained(folder)
    for kind, grid in (("gan", {}), ("diffusion", {"predictions": ("sample",)})):  # tiny runs: mechanics only
        train_generative_sampler(gen, kind, fraction=1.0, steps=(5,), progress=False, **grid)
    gen.anchors.save(folder)
    repo, zoo_repo = hub_server.new_repo_id("sane-digits"), hub_server.new_repo_id("digits-resnet-zoo")
    first = push_checkpoint(folder, repo)
    x = zoo.weights("test")[:2]
    expected = {
        "x": x,
        "tokens": WeightTokenizer.from_pretrained(folder).tokenize_flat(x)["tokens"],
        "embedding": torch.stack(pipeline("weight-embedding", model=str(folder), device="cpu")(list(x))),
        "prediction": pipeline("weight-property-prediction", model=str(folder), device="cpu")(x[0]),
        "samples": [s["state_dict"] for s in pipeline("weight-generation", model=str(folder), device="cpu")(
            num_samples=2, method="kde30", seed=0)],
        # without BatchNorm conditioning, as remote code without hyperrep_hf's task data draws
        **{method: [s["state_dict"] for s in pipeline("weight-generation", model=str(folder), device="cpu")(
            num_samples=2, method=method, seed=0, condition_bn=False)] for method in ("kde30", "gan", "diffusion")},
    }
    torch.save(expected, root / "io.pt")
    for i, row in enumerate(x):
        save_file(zoo.layout.unflatten(row), root / f"model-{i}.safetensors")
    fit_probes(zoo, "sane", folder, properties=["test_acc"], permutations=0).save(folder)
    second = push_checkpoint(folder, repo, commit_message="probes of test_acc only")
    assert cli(["zoo", "push", str(zoo.path), zoo_repo, "--revision", "v1", "--commit-message", "the digits zoo"]) == 0
    push_zoo(zoo.path, zoo_repo)
    return {"root": root, "folder": folder, "repo": repo, "zoo_repo": zoo_repo, "first": first.oid,
            "second": second.oid, "zoo": zoo}


def run_python(script: str, *args, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def fresh_env(tmp_path, **extra) -> dict:
    """The session's Hub settings with an empty HF_HOME, on the CPU."""
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "CUDA_VISIBLE_DEVICES": "", **extra}


def test_push_uploads_the_folder_whole_in_one_commit(shared, hub_server):
    repo, folder = shared["repo"], shared["folder"]
    files = set(hub_server.repo_files(repo, revision=shared["first"]))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_args.json",
            "metrics.jsonl", "probes/sane.json", "probes/sane.safetensors", "sampling/sampling.json",
            "sampling/anchors.safetensors", "modeling_sane.py", "tokenization_weights.py", "weight_embedding.py",
            "weight_property_prediction.py", "weight_generation.py", "architectures.py"} <= files
    assert (folder / "checkpoints").is_dir() and (folder / "runs").is_dir()
    uploaded = files - {".gitattributes"}  # .gitattributes: the Hub's own, made with the repo
    assert not any(f.startswith(("checkpoints/", "runs/", ".")) or "/." in f for f in uploaded), uploaded
    assert hub_server.is_lfs(repo, "model.safetensors")
    # one commit per push: the repo's history is its creation plus the two pushes
    commits = HfApi().list_repo_commits(repo)
    assert [c.commit_id for c in commits[:2]] == [shared["second"], shared["first"]]
    assert commits[0].title == "probes of test_acc only"
    config = json.loads((folder / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"weight-embedding", "weight-property-prediction", "weight-generation"}
    assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoFeatureExtractor": "tokenization_weights.WeightTokenizer"}
    # the card names the repo and carries the saved probes' validation scores as model-index
    card = ModelCard.load(hf_hub_download(repo, "README.md", revision=shared["first"]))
    probes = json.loads((folder / "probes" / "sane.json").read_text())  # the refitted (test_acc) probes
    assert {r.metric_name for r in card.data.eval_results} == {"R^2 test_acc", "R^2 epoch"}
    assert all(r.dataset_split == "validation" for r in card.data.eval_results)
    main_card = ModelCard.load(repo)
    assert [(r.metric_name, r.metric_value) for r in main_card.data.eval_results] == [
        ("R^2 test_acc", probes["probes"]["test_acc"]["validation"]["r2"])]
    assert f'AutoModel.from_pretrained("{repo}")' in main_card.text
    with_logs = hub_server.new_repo_id("with-logs")  # --logs: the TensorBoard logs travel too
    assert cli(["push", str(folder), with_logs, "--logs", "--commit-message", "with logs"]) == 0
    logs = [f for f in hub_server.repo_files(with_logs) if f.startswith("runs/")]
    assert logs and not any(f.startswith("checkpoints/") for f in hub_server.repo_files(with_logs))


WITH_PACKAGE = textwrap.dedent(
    """
    import sys, json, torch
    import datasets
    import hyperrep_hf
    from safetensors.torch import load_file
    from transformers import AutoFeatureExtractor, AutoModel, pipeline
    from hyperrep_hf.cli import main as cli
    from hyperrep_hf.zoo import load_zoo

    repo, zoo_repo, first, root, out = sys.argv[1:6]
    io = torch.load(f"{root}/io.pt")
    model, tokenizer = AutoModel.from_pretrained(repo), AutoFeatureExtractor.from_pretrained(repo)
    assert type(model).__module__ == "hyperrep_hf.modeling_sane", type(model)
    assert type(tokenizer).__module__ == "hyperrep_hf.tokenization_weights", type(tokenizer)
    assert tokenizer.layouts[0].permutation is not None and tokenizer.layouts[0].standardized

    embed = pipeline("weight-embedding", model=repo)
    assert torch.allclose(torch.stack(embed(list(io["x"]))), io["embedding"], atol=1e-6)
    # revision pins the commit: the first push's probes predicted test_acc and epoch, main's test_acc only
    pinned = pipeline("weight-property-prediction", model=repo, revision=first)(io["x"][0])
    assert pinned.keys() == io["prediction"].keys() == {"test_acc", "epoch"}, pinned
    assert all(abs(pinned[k] - io["prediction"][k]) < 1e-6 for k in pinned), (pinned, io["prediction"])
    assert set(pipeline("weight-property-prediction", model=repo)(io["x"][0])) == {"test_acc"}
    samples = pipeline("weight-generation", model=repo)(num_samples=2, method="kde30", seed=0)
    for got, want in zip(samples, io["samples"]):  # BatchNorm conditioned on digits, as the local folder did
        assert all(torch.allclose(got["state_dict"][k], want[k], atol=1e-5) for k in want)
        assert isinstance(got["model"], torch.nn.Module)

    zoo = load_zoo(zoo_repo)
    assert {s: len(d) for s, d in zoo.dataset.items()} == {"train": 8, "validation": 2, "test": 2}
    plain = datasets.load_dataset(zoo_repo)
    assert sorted(plain) == ["test", "train", "validation"], plain
    assert plain["train"].features["weights"].length == zoo.num_weights

    models = [f"{root}/model-0.safetensors", f"{root}/model-1.safetensors"]
    assert cli(["embed", "--checkpoint", repo, "--models", *models, "--out", f"{out}/emb.safetensors"]) == 0
    assert torch.allclose(load_file(f"{out}/emb.safetensors")["embeddings"], io["embedding"], atol=1e-6)
    assert cli(["probe", "predict", "--checkpoint", repo, "--revision", first, "--models", *models,
                "--out", f"{out}/pred.json"]) == 0
    assert set(json.load(open(f"{out}/pred.json"))[0]["predicted"]) == {"test_acc", "epoch"}
    assert cli(["sample", "--checkpoint", repo, "--num-samples", "2", "--out", f"{out}/samples"]) == 0
    assert load_file(f"{out}/samples/sample-001.safetensors").keys() == io["samples"][1].keys()
    print("with package ok")
    """
)


def test_by_repo_id_with_the_package_then_offline_from_the_cache(shared, tmp_path, monkeypatch):
    env = fresh_env(tmp_path)
    args = (shared["repo"], shared["zoo_repo"], shared["first"], shared["root"], tmp_path)
    assert "with package ok" in run_python(WITH_PACKAGE, *args, env=env)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing to reach
    assert "with package ok" in run_python(WITH_PACKAGE, *args, env=offline)


WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys, warnings
    # a plain `pip install transformers torch`: none of these are there
    for name in ("hyperrep_hf", "datasets", "scipy", "sklearn", "pandas", "pyarrow", "accelerate", "evaluate"):
        sys.modules[name] = None
    import torch
    from transformers import AutoFeatureExtractor, AutoModel, pipeline

    repo, first, root = sys.argv[1:4]
    io = torch.load(f"{root}/io.pt")
    model = AutoModel.from_pretrained(repo, trust_remote_code=True)
    tokenizer = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model)
    assert type(tokenizer).__module__.startswith("transformers_modules."), type(tokenizer)
    assert torch.equal(tokenizer.tokenize_flat(io["x"])["tokens"], io["tokens"])  # standardised as in training

    embed = pipeline("weight-embedding", model=repo, trust_remote_code=True)
    assert type(embed).__module__.startswith("transformers_modules."), type(embed)
    assert torch.allclose(torch.stack(embed(list(io["x"]))), io["embedding"], atol=1e-6)
    predict = pipeline("weight-property-prediction", model=repo, revision=first, trust_remote_code=True)
    got = predict(io["x"][0])
    assert got.keys() == io["prediction"].keys() and all(abs(got[k] - io["prediction"][k]) < 1e-6 for k in got)
    generate = pipeline("weight-generation", model=repo, trust_remote_code=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = generate(num_samples=2, method="kde30", seed=0)
    assert any("BatchNorm statistics are the decoded ones" in str(w.message) for w in caught)
    for got, want in zip(samples, io["kde30"]):  # the shipped ResNet builder makes ready models
        assert isinstance(got["model"], torch.nn.Module)
        assert all(torch.allclose(got["state_dict"][k], want[k], atol=1e-5) for k in want)
    for method in ("gan", "diffusion"):  # the samplers saved with the checkpoint draw with torch alone
        for got, want in zip(generate(num_samples=2, method=method, seed=0, condition_bn=False), io[method]):
            assert all(torch.allclose(got["state_dict"][k], want[k], atol=1e-5) for k in want)
    assert not [m for m, v in sys.modules.items() if v is not None and m.startswith(("hyperrep_hf", "scipy", "datasets"))]
    print("without package ok")
    """
)


def test_by_repo_id_without_the_package(shared, tmp_path):
    out = run_python(WITHOUT_PACKAGE, shared["repo"], shared["first"], shared["root"],
                     env=fresh_env(tmp_path, PYTHONPATH=""))
    assert "without package ok" in out


THROUGH_MIRROR = textwrap.dedent(
    """
    import sys, torch
    import hyperrep_hf
    from huggingface_hub import snapshot_download
    from transformers import pipeline

    repo, root = sys.argv[1:3]
    io = torch.load(f"{root}/io.pt")
    # olah answers 401 instead of 404 for files a repo lacks (transformers probes a few): air-gapped
    # users take a snapshot of the repo through the mirror and run the pipelines on it
    folder = snapshot_download(repo)
    assert torch.allclose(torch.stack(pipeline("weight-embedding", model=folder)(list(io["x"]))), io["embedding"], atol=1e-6)
    assert set(pipeline("weight-property-prediction", model=folder)(io["x"][0])) == {"test_acc"}
    assert len(pipeline("weight-generation", model=folder)(num_samples=1, seed=0)) == 1
    print("mirror ok")
    """
)


def test_through_an_offline_olah_mirror(shared, olah_mirror, tmp_path):
    olah_mirror.add_repo("mirror-org/sane-digits", shared["folder"])
    env = fresh_env(tmp_path, HF_ENDPOINT=olah_mirror.endpoint)
    assert "mirror ok" in run_python(THROUGH_MIRROR, "mirror-org/sane-digits", shared["root"], env=env)


def test_a_repo_without_probes_or_anchors_names_the_commands_that_make_them(shared, hub_server, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (bare / name).write_bytes((shared["folder"] / name).read_bytes())
    repo = hub_server.new_repo_id("bare")
    push_checkpoint(bare, repo)
    x = shared["zoo"].weights("test")[0]
    with pytest.raises(FileNotFoundError, match=r"hyperrep probe fit.*hyperrep push"):
        pipeline("weight-property-prediction", model=repo, device="cpu")(x)
    with pytest.raises(FileNotFoundError, match=r"hyperrep sample --checkpoint .* --prepare.*hyperrep push"):
        pipeline("weight-generation", model=repo, device="cpu")(num_samples=1)
    with pytest.raises(FileNotFoundError, match="has no config.json: save the model"):
        push_checkpoint(tmp_path, repo)


def test_missing_repos_revisions_and_private_repos_get_the_hubs_typed_errors(shared, hub_server, tmp_path, capsys):
    missing = hub_server.new_repo_id("never-pushed")
    with pytest.raises(OSError, match=missing):
        pipeline("weight-embedding", model=missing, device="cpu")
    with pytest.raises(OSError, match="no-such-branch"):
        pipeline("weight-embedding", model=shared["repo"], revision="no-such-branch", device="cpu")
    assert cli(["embed", "--checkpoint", missing, "--models", str(shared["root"] / "model-0.safetensors"),
                "--out", str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hyperrep embed: error: ") and missing in err and "Traceback" not in err
    private = hub_server.new_repo_id("private")
    push_checkpoint(shared["folder"], private, private=True, revision="dev")
    assert "model.safetensors" in hub_server.repo_files(private, revision="dev")
    no_token = {k: v for k, v in fresh_env(tmp_path).items() if k != "HF_TOKEN"}
    script = ("import sys, hyperrep_hf\nfrom transformers import pipeline\ntry:\n"
              "    pipeline('weight-embedding', model=sys.argv[1], revision='dev')\n"
              "except OSError as err:\n    assert sys.argv[1] in str(err), err\n    print('refused')\n")
    assert "refused" in run_python(script, private, env=no_token)
    offline = subprocess.run([sys.executable, "-m", "hyperrep_hf.cli", "embed", "--checkpoint", missing, "--models",
                              str(shared["root"] / "model-0.safetensors"), "--out", str(tmp_path / "o.safetensors")],
                             capture_output=True, text=True, timeout=300, env=fresh_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 2 and f"cannot load the checkpoint {missing}" in offline.stderr, offline.stderr[-2000:]


def test_the_library_never_turns_on_trust_remote_code():
    src = Path(__file__).resolve().parents[1] / "src" / "hyperrep_hf"
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path


def test_a_pushed_zoo_declares_its_splits_and_features_for_plain_datasets(shared, hub_server):
    repo = shared["zoo_repo"]
    assert HfApi().list_repo_commits(repo, repo_type="dataset", revision="v1")[0].title == "the digits zoo"
    card = DatasetCard.load(repo)
    assert [c["split"] for c in card.data.configs[0]["data_files"]] == ["train", "validation", "test"]
    features = {f["name"]: f for f in card.data.dataset_info["features"]}
    assert features["weights"] == {"name": "weights", "list": "float32", "length": shared["zoo"].num_weights}
    assert {"model_id", "epoch", "test_acc", "diverged"} <= set(features)
    files = [f for f in hub_server.repo_files(repo, "dataset") if f.endswith(".parquet")]
    assert {f.split("/")[1].split("-")[0] for f in files} == {"train", "validation", "test"}


def test_row_groups_stay_under_the_hub_viewers_limit_for_resnet18_rows(tmp_path):
    """A full-width ResNet-18 row is 45 MB; a row group must stay under 100 MB for the Hub's viewer."""
    from hyperrep_hf.zoo.dataset import HYPERPARAMETER_TYPES, METRICS, write_shard

    P = 11_200_000
    rows = {"model_id": [0, 0, 1], "epoch": [0, 1, 0], "weights": np.zeros((3, P), dtype=np.float32),
            "architecture": ["resnet18"] * 3, "diverged": [False] * 3, **{m: [0.5] * 3 for m in METRICS}}
    rows.update({k: [None] * 3 for k in HYPERPARAMETER_TYPES})
    write_shard(tmp_path / "train-00000.parquet", rows, P)
    meta = pq.ParquetFile(tmp_path / "train-00000.parquet").metadata
    assert meta.num_rows == 3 and meta.num_row_groups == 3
    assert max(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) < 100 << 20
