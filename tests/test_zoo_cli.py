"""`hyperrep zoo build | info | import | push`, and the Hub round trip against the local test Hub."""

import json

import datasets
import torch

from hyperrep_hf.cli import main
from hyperrep_hf.zoo import load_zoo
from test_zoo_import import _write_trial

CONFIG = {
    "architecture": "cnn-digits",
    "task": "digits",
    "task_kwargs": {"limit": 100},
    "hyperparameters": {"lr": [0.01, 0.001]},
    "num_models": 4,
    "epochs": 1,
}


def test_build_info_push_and_load_back_from_the_hub(tmp_path, capsys, hub_server):
    cfg = tmp_path / "zoo.yaml"
    cfg.write_text(json.dumps(CONFIG))  # JSON is valid YAML
    out = tmp_path / "digits-zoo"
    assert main(["zoo", "build", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert main(["zoo", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cnn-digits" in printed and "varied: seed, lr" in printed
    assert any(line.startswith("train") for line in printed.splitlines())

    repo_id = hub_server.new_repo_id("digits-zoo")
    assert main(["zoo", "push", str(out), repo_id]) == 0
    remote = datasets.load_dataset(repo_id)
    local = load_zoo(out)
    assert {k: len(v) for k, v in remote.items()} == {k: len(v) for k, v in local.dataset.items()}
    zoo = load_zoo(repo_id)
    torch.testing.assert_close(zoo.weights("test"), local.weights("test"))
    assert zoo.architecture == "cnn-digits" and zoo.config["num_models"] == 4
    assert repo_id in (zoo.path / "README.md").read_text()


def test_import_command(tmp_path, capsys):
    for i in range(3):
        _write_trial(tmp_path / "trials", i, epochs=1)
    assert main(["zoo", "import", "--format", "modelzoos", str(tmp_path / "trials"), "--out", str(tmp_path / "zoo"), "--quiet"]) == 0
    assert "cnn-s" in capsys.readouterr().out
    assert sum(len(d) for d in load_zoo(tmp_path / "zoo").dataset.values()) == 6


def test_bad_input_is_one_clear_error_line(tmp_path, capsys):
    assert main(["zoo", "build", "--preset", "mnist-large", "--out", str(tmp_path / "z")]) == 2
    assert "unknown preset 'mnist-large'; choose one of ['digits-hyp', 'digits-seed', 'mnist-hyp', 'mnist-seed']" in capsys.readouterr().err
    assert main(["zoo", "info", str(tmp_path)]) == 2
    assert "is not a zoo: it has no zoo_config.json" in capsys.readouterr().err
    assert main(["zoo", "import", "--format", "tfrecords", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown import format 'tfrecords'; choose one of ['checkpoints', 'hub-models', 'modelzoos', 'smallcnnzoo']" in capsys.readouterr().err
