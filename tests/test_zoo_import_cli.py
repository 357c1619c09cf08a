"""`hyperrep zoo import --format {smallcnnzoo,modelzoos,checkpoints,hub-models}` and format detection."""

import json

import pandas as pd
import torch

from hyperrep_hf.cli import main
from hyperrep_hf.zoo import build_model, load_zoo
from test_import_smallcnnzoo import write_zoo as write_smallcnnzoo
from test_zoo_import import _write_trial


def test_every_format_imports_from_the_command_line(tmp_path, capsys, hub_server):
    folder, weights, metrics = write_smallcnnzoo(tmp_path / "small")
    pd.DataFrame(list(range(len(weights)))).to_csv(tmp_path / "split.csv", index=False)
    assert main(["zoo", "import", "--format", "smallcnnzoo", str(tmp_path / "small"), "--out", str(tmp_path / "z1"),
                 "--split-file", str(tmp_path / "split.csv"), "--quiet"]) == 0
    assert "cnn-smallzoo" in capsys.readouterr().out and load_zoo(tmp_path / "z1").config["split"] == "NFN split file split.csv"

    for i in range(3):
        _write_trial(tmp_path / "trials", i, epochs=1)
    assert main(["zoo", "import", str(tmp_path / "trials"), "--out", str(tmp_path / "z2"), "--task", "mnist", "--quiet"]) == 0  # detected
    assert load_zoo(tmp_path / "z2").task == "mnist" and load_zoo(tmp_path / "z2").config["source"] == "modelzoos"

    (tmp_path / "ckpt").mkdir()
    rows = []
    for m in range(3):
        torch.manual_seed(m)
        torch.save(build_model("mlp", in_features=4, hidden=[3]).state_dict(), tmp_path / "ckpt" / f"m{m}.pt")
        rows.append({"file": f"m{m}.pt", "model_id": m, "epoch": 5, "test_acc": 0.5 + m / 10})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    assert main(["zoo", "import", "--format", "checkpoints", str(tmp_path / "ckpt"), "--out", str(tmp_path / "z3"),
                 "--metadata", str(tmp_path / "meta.csv"), "--architecture", "mlp",
                 "--architecture-kwargs", json.dumps({"in_features": 4, "hidden": [3]}), "--quiet"]) == 0
    zoo = load_zoo(tmp_path / "z3")
    assert zoo.architecture == "mlp" and sorted(zoo.metadata("train").epoch.unique()) == [5]

    from huggingface_hub import HfApi
    from safetensors.torch import save_file

    ids = []
    for m in range(3):
        ids.append(hub_server.new_repo_id(f"cli-mlp-{m}"))
        HfApi().create_repo(ids[-1])
        save_file(torch.load(tmp_path / "ckpt" / f"m{m}.pt", weights_only=True), tmp_path / "model.safetensors")
        HfApi().upload_file(path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors", repo_id=ids[-1])
    assert main(["zoo", "import", "--format", "hub-models", "--models", *ids, "--out", str(tmp_path / "z4"), "--quiet"]) == 0
    zoo = load_zoo(tmp_path / "z4")
    sources = [s for split in zoo.dataset for s in zoo.metadata(split).source]
    assert zoo.architecture is None and sorted(s.split("@")[0] for s in sources) == sorted(ids)  # no architecture given: state_dict rows


def test_import_errors_are_one_line_and_name_what_each_format_expects(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert main(["zoo", "import", str(tmp_path / "notes"), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "is none of the import formats: smallcnnzoo expects weights.npy, metrics.csv.gz and layout.csv" in err
    assert "modelzoos expects <trial>/params.json" in err and "checkpoints expects checkpoint files" in err and "hub-models expects no PATH" in err
    for i in range(3):
        _write_trial(tmp_path / "trials", i, epochs=1)
    assert main(["zoo", "import", "--format", "modelzoos", str(tmp_path / "trials"), "--out", str(tmp_path / "z"), "--split-file", "x.csv"]) == 2
    assert "--split-file do(es) not apply to --format modelzoos" in capsys.readouterr().err
    assert main(["zoo", "import", "--format", "checkpoints", str(tmp_path / "trials"), "--out", str(tmp_path / "z"), "--architecture-kwargs", "{oops"]) == 2
    assert "--architecture-kwargs is not JSON" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
