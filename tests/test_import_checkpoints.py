"""Importing people's own checkpoints (state_dict files, transformers folders) with a metadata table."""

import sys
import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hyperrep_hf.zoo import ARCHITECTURES, build_model, import_zoo, load_zoo, trust_builder
from hyperrep_hf.zoo.importers import checkpoints
from hyperrep_hf.zoo.importers.writer import work_folder

BUILDER = '''
from torch import nn


def make_net(width=4, activation="relu"):
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    return nn.Sequential(nn.Linear(3, width), act(), nn.Linear(width, 2))


def not_a_model(width=4):
    return "a string"
'''


@pytest.fixture
def builder_module(tmp_path, monkeypatch):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_nets.py").write_text(textwrap.dedent(BUILDER))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return "my_nets"


def _runs(root, n_models=4, epochs=(0, 1, 2), skip=((3, 1),), diverge=2):
    """runs/<model>/epoch_<e>.{pt,safetensors}: MLPs with activation varying; model `diverge` ends in NaN; (3, 1) is missing."""
    rows, states = [], {}
    for m in range(n_models):
        act = ("relu", "tanh")[m % 2]
        torch.manual_seed(m)
        net = nn.Sequential(nn.Linear(3, 4), {"relu": nn.ReLU, "tanh": nn.Tanh}[act](), nn.Linear(4, 2))
        for e in epochs:
            if (m, e) in skip:
                continue
            with torch.no_grad():
                for p in net.parameters():
                    p.mul_(1.1)
                if m == diverge and e == epochs[-1]:
                    net[0].weight[0, 0] = float("nan")
            sd = {k: v.clone() for k, v in net.state_dict().items()}
            rel = f"runs/m{m}/epoch_{e}." + ("safetensors" if m % 2 else "pt")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(sd, root / rel) if m % 2 else torch.save(sd, root / rel)
            states[rel] = sd
            rows.append({"file": rel, "model_id": f"run-{m}", "epoch": e, "test_acc": 0.5 + 0.1 * e, "train_acc": 0.6 + 0.1 * e,
                         "activation": act, "lr": 0.01 * (m + 1), "width": 4, "optimizer_name": ("adam", "sgd")[m % 2]})
    return pd.DataFrame(rows), states


def _check_rows(zoo, states, buildable=True):
    x = torch.randn(5, 3)
    seen = 0
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            sd = states[row["source"]]
            got = zoo.state_dict(row)
            assert list(got) == list(sd)
            for k in sd:
                torch.testing.assert_close(got[k], sd[k], equal_nan=True)
            if buildable and not row["diverged"]:
                model = zoo.build_model(row)
                ref = nn.Sequential(nn.Linear(3, 4), {"relu": nn.ReLU, "tanh": nn.Tanh}[row["activation"]](), nn.Linear(4, 2))
                ref.load_state_dict(sd)
                torch.testing.assert_close(model(x), ref(x))
            seen += 1
    return seen


@pytest.mark.parametrize("table_format", ["csv", "jsonl", "parquet"])
def test_checkpoints_with_a_builder_and_a_metadata_table(tmp_path, builder_module, table_format, monkeypatch):
    table, states = _runs(tmp_path / "src")
    meta = tmp_path / f"meta.{table_format}"
    {"csv": lambda: table.to_csv(meta, index=False), "jsonl": lambda: table.to_json(meta, orient="records", lines=True),
     "parquet": lambda: table.to_parquet(meta)}[table_format]()
    zoo = import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", metadata=meta, architecture="my_nets:make_net",
                     architecture_kwargs={"width": 4}, progress=False)
    assert zoo.architecture == "my_nets:make_net" and zoo.num_weights == 26
    assert _check_rows(zoo, states) == 11
    rows = [r for s in zoo.dataset for r in zoo.dataset[s]]
    assert {r["model_name"] for r in rows} == {"run-0", "run-1", "run-2", "run-3"}
    assert {r["optimizer_name"] for r in rows} == {"adam", "sgd"} and zoo.extra_columns["width"] == "int64"
    assert [r["diverged"] for r in rows if r["model_name"] == "run-2" and r["epoch"] == 2] == [True]
    assert sorted(r["epoch"] for r in rows if r["model_name"] == "run-3") == [0, 2]
    assert [r["ggap"] for r in rows if r["epoch"] == 0] == [pytest.approx(0.1)] * 4
    splits = {}
    for s in zoo.dataset:
        for r in zoo.dataset[s]:
            assert splits.setdefault(r["model_name"], s) == s
    # elsewhere, without the builder installed: the zoo still loads (rows as state_dicts); building says what is missing
    monkeypatch.delitem(sys.modules, builder_module)
    monkeypatch.delitem(ARCHITECTURES, "my_nets:make_net")  # trusted by the import in this process
    zoo = load_zoo(tmp_path / "zoo")
    assert len(zoo.state_dict(zoo.dataset["train"][0])) == 4
    # a zoo only names its builder: loading and building import nothing until the user trusts it
    with pytest.raises(ValueError, match=r"'my_nets:make_net' is code outside hyperrep_hf .*trust_builder\('my_nets:make_net'\)"):
        zoo.build_model(zoo.dataset["train"][0])
    assert builder_module not in sys.modules
    trust_builder("my_nets:make_net")
    assert isinstance(zoo.build_model(zoo.dataset["train"][0]), nn.Module)
    monkeypatch.delitem(sys.modules, builder_module)
    monkeypatch.delitem(ARCHITECTURES, "my_nets:make_net")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("mods")])
    with pytest.raises(ValueError, match=r"architecture 'my_nets:make_net': cannot import my_nets .* install it or put it on PYTHONPATH"):
        trust_builder("my_nets:make_net")


def test_registered_architecture_and_a_split_column(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    rows, states = [], {}
    for m in range(3):
        torch.manual_seed(m)
        sd = build_model("mlp", in_features=4, hidden=[5], num_classes=3, activation="tanh").state_dict()
        torch.save({"state_dict": sd, "epoch": 3}, root / f"m{m}.pth")  # a wrapped state_dict, as training loops save them
        states[f"m{m}.pth"] = sd
        rows.append({"file": f"m{m}.pth", "model_id": 10 + m, "epoch": 3, "split": ("train", "train", "test")[m], "activation": "tanh"})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    zoo = import_zoo("checkpoints", root, tmp_path / "zoo", metadata=tmp_path / "meta.csv", architecture="mlp",
                     architecture_kwargs={"in_features": 4, "hidden": [5], "num_classes": 3, "activation": "tanh"}, progress=False)
    assert {s: sorted(zoo.metadata(s).model_id) for s in zoo.dataset} == {"train": [10, 11], "test": [12]}
    for s in zoo.dataset:
        for row in zoo.dataset[s]:
            model = zoo.build_model(row)
            for k, v in states[row["source"]].items():
                torch.testing.assert_close(model.state_dict()[k], v)


def test_without_an_architecture_rows_are_state_dicts_and_the_zoo_still_loads(tmp_path):
    table, states = _runs(tmp_path / "src", n_models=3, epochs=(0,), skip=(), diverge=-1)
    zoo = import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", progress=False)  # no metadata: one model per file
    assert zoo.architecture is None and zoo.info["num_models"] == 3
    zoo = load_zoo(tmp_path / "zoo")
    assert _check_rows(zoo, states, buildable=False) == 3
    with pytest.raises(ValueError, match=r"imported without an architecture: its rows are state_dicts \(zoo.state_dict\(row\)\); import it again with --architecture"):
        zoo.build_model(zoo.dataset["train"][0])


def test_transformers_model_folders_are_built_from_their_config(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0, eos_token_id=0)
    states, rows = {}, []
    for m in range(3):
        torch.manual_seed(m)
        model = GPT2LMHeadModel(config)
        model.save_pretrained(tmp_path / "src" / f"run{m}" / "checkpoint-100")  # safetensors, tied lm_head left out
        states[f"run{m}/checkpoint-100"] = model
        rows.append({"file": f"run{m}/checkpoint-100", "model_id": m, "epoch": 1})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    zoo = import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", metadata=tmp_path / "meta.csv", progress=False)
    assert zoo.architecture == "transformers" and zoo.architecture_kwargs["config"]["model_type"] == "gpt2"
    ids = torch.tensor([[1, 2, 3, 4]])
    for s in zoo.dataset:
        for row in zoo.dataset[s]:
            built = zoo.build_model(row)
            assert type(built).__name__ == "GPT2LMHeadModel"
            torch.testing.assert_close(built(ids).logits, states[row["source"]].eval()(ids).logits)


def test_a_killed_checkpoint_import_resumes(tmp_path, monkeypatch):
    table, states = _runs(tmp_path / "src", n_models=4, epochs=(0,), skip=(), diverge=-1)
    real, calls = checkpoints.read_checkpoint, {"n": 0}

    def dies_at_3(path, where=None):
        calls["n"] += 1
        if calls["n"] == 4:  # 1 read for the layout, then models 0, 1 (shard 0) and model 2 dies
            raise KeyboardInterrupt
        return real(path, where)

    monkeypatch.setattr(checkpoints, "read_checkpoint", dies_at_3)
    with pytest.raises(KeyboardInterrupt):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", models_per_shard=2, progress=False)
    assert not (tmp_path / "zoo").exists() and work_folder(tmp_path / "zoo").exists()
    calls["n"] = -100
    zoo = import_zoo("checkpoints", tmp_path / "src", tmp_path / "zoo", models_per_shard=2, progress=False)
    assert calls["n"] == -100 + 1 + 2  # the layout, then only models 2 and 3
    assert _check_rows(zoo, states, buildable=False) == 4


def test_bad_checkpoint_inputs_are_named(tmp_path, builder_module):
    table, _ = _runs(tmp_path / "src", n_models=3, epochs=(0, 1), skip=(), diverge=-1)
    meta = tmp_path / "meta.csv"

    table.assign(file=table.file.str.replace("m1/epoch_1", "m1/epoch_9")).to_csv(meta, index=False)
    with pytest.raises(ValueError, match=r"meta.csv names 1 file\(s\) that are not in .*src: \['runs/m1/epoch_9.safetensors'\]"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, progress=False)

    table.assign(epoch=0).to_csv(meta, index=False)
    with pytest.raises(ValueError, match=r"two files for model 'run-0' at epoch 0 \(runs/m0/epoch_0.pt and runs/m0/epoch_1.pt\)"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, progress=False)

    table.to_csv(meta, index=False)
    with pytest.raises(ValueError, match=r"my_nets:not_a_model' returned a str, not an nn.Module"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, architecture="my_nets:not_a_model", progress=False)
    with pytest.raises(ValueError, match=r"cannot import no_such_pkg.nets \(ModuleNotFoundError.*install it or put it on PYTHONPATH"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, architecture="no_such_pkg.nets:make", progress=False)
    with pytest.raises(ValueError, match=r"os is a standard-library module"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, architecture="os:system", progress=False)
    with pytest.raises(ValueError, match=r"epoch_0.pt: does not fit architecture my_nets:make_net: tensor 0 of the model, '0.weight' of shape \[4, 3\], differs from the layout, which expects '0.weight' of shape \[6, 3\]"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, architecture="my_nets:make_net",
                   architecture_kwargs={"width": 6}, progress=False)
    with pytest.raises(ValueError, match=r"does not take the arguments \{'depth': 2\}"):
        import_zoo("checkpoints", tmp_path / "src", tmp_path / "z", metadata=meta, architecture="my_nets:make_net",
                   architecture_kwargs={"depth": 2}, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no checkpoints: expected checkpoint files \(\*.safetensors"):
        import_zoo("checkpoints", tmp_path / "empty", tmp_path / "z", progress=False)
    assert not (tmp_path / "z").exists()
