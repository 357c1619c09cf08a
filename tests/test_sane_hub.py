"""Sharing a SANE checkpoint: push model, weight tokenizer and card to a Hub (the local test Hub
of tests/hub_server.py), load them by repo id in a fresh process; download through an offline
olah mirror; the model card's metadata."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, constants, get_session, hf_hub_download, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.cards import check_model_card, probe_eval_results, sane_model_card, save_model_card
from hyperrep_hf.zoo.architectures import build_model
from test_remote_code import REMOTE_LOAD

FRESH_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    import hyperrep_hf  # registers SANE and the weight tokenizer with the Auto classes
    from hyperrep_hf.zoo.architectures import build_model
    from transformers import AutoFeatureExtractor, AutoModel

    repo, io_path, via = sys.argv[1], sys.argv[2], sys.argv[3]
    model = AutoModel.from_pretrained(repo)
    if via == "snapshot":
        # olah answers 401 instead of 404 for the processor_config.json that AutoFeatureExtractor
        # probes first; a snapshot of the repo (what air-gapped users fetch) loads fine.
        from huggingface_hub import snapshot_download
        tokenizer = AutoFeatureExtractor.from_pretrained(snapshot_download(repo))
    else:
        tokenizer = AutoFeatureExtractor.from_pretrained(repo)
    assert type(model).__module__ == "hyperrep_hf.modeling_sane", type(model)
    assert type(tokenizer).__name__ == "WeightTokenizer", type(tokenizer)
    io = torch.load(io_path)
    torch.manual_seed(0)
    enc = tokenizer(build_model("cnn-s"))
    assert torch.equal(enc["tokens"], io["tokens"])
    embedding = model.embed(enc["tokens"], enc["positions"], enc["attention_mask"])
    assert torch.equal(embedding, io["embedding"]), (embedding - io["embedding"]).abs().max()
    assert torch.equal(model.layer_sigma, io["layer_sigma"])
    print("loaded", repo)
    """
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SANE model, its fitted weight tokenizer and the expected embedding of a CNN-s."""
    torch.manual_seed(0)
    zoo = [build_model("cnn-s") for _ in range(4)]
    tokenizer = WeightTokenizer(token_size="auto").fit_standardization(zoo)
    config = SaneConfig.from_preset("tiny", token_size=tokenizer.token_size, d_model=32, latent_dim=8, window_size=64)
    model = SaneModel(config).eval()
    model.set_layer_sigma(torch.linspace(0.5, 1.5, 8))
    torch.manual_seed(0)
    enc = tokenizer(build_model("cnn-s"))
    io = {
        "tokens": enc["tokens"],
        "embedding": model.embed(enc["tokens"], enc["positions"], enc["attention_mask"]),
        "layer_sigma": model.layer_sigma.clone(),
    }
    folder = tmp_path_factory.mktemp("sane-ckpt")
    torch.save(io, folder / "io.pt")
    return model, tokenizer, folder / "io.pt"


def run_python(script: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, env=env or dict(os.environ)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_push_model_and_tokenizer_then_load_by_repo_id_in_a_fresh_process(checkpoint, hub_server, hub_repo_id):
    model, tokenizer, io_path = checkpoint
    model.push_to_hub(repo_id=hub_repo_id)
    tokenizer.push_to_hub(repo_id=hub_repo_id)
    files = set(hub_server.repo_files(hub_repo_id, "model"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_sane.py"} <= files
    assert hub_server.is_lfs(hub_repo_id, "model.safetensors")
    assert "loaded " + hub_repo_id in run_python(FRESH_LOAD, hub_repo_id, str(io_path), "repo-id")


def test_pushed_checkpoint_loads_with_remote_code_without_the_package(checkpoint, hub_repo_id, tmp_path):
    model, _, _ = checkpoint
    model.push_to_hub(repo_id=hub_repo_id)
    tokens = torch.randn(2, 5, model.config.token_size)
    positions = torch.stack([torch.arange(5), torch.arange(5) // 2, torch.arange(5)], -1).expand(2, 5, 3)
    mask = torch.ones(2, 5)
    out = model(tokens, positions, mask, targets=tokens, num_views=2)
    torch.save({"tokens": tokens, "positions": positions, "mask": mask, "latents": out.latents,
                "layer_sigma": model.layer_sigma, "loss": out.loss.item()}, tmp_path / "io.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    assert "remote ok transformers_modules." in run_python(REMOTE_LOAD, hub_repo_id, str(tmp_path / "io.pt"), env=env)


def test_download_through_an_offline_olah_mirror(checkpoint, olah_mirror, tmp_path):
    model, tokenizer, io_path = checkpoint
    folder = tmp_path / "sane-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_model_card(sane_model_card(model, model_name="SANE tiny", repo_id="mirror-org/sane-tiny"), folder)
    olah_mirror.add_repo("mirror-org/sane-tiny", folder)
    env = {**os.environ, "HF_ENDPOINT": olah_mirror.endpoint, "HF_HOME": str(tmp_path / "hf_home")}
    assert "loaded mirror-org/sane-tiny" in run_python(FRESH_LOAD, "mirror-org/sane-tiny", str(io_path), "snapshot", env=env)


def test_model_card_metadata_round_trips_and_passes_the_hub_check(checkpoint, hub_repo_id, tmp_path):
    model, _, _ = checkpoint
    results = probe_eval_results({"test_acc": 0.912, "epoch": 0.85}, dataset="hyperrep-org/mnist-zoo",
                                 dataset_name="MNIST CNN-s zoo")
    card = sane_model_card(model, model_name="SANE tiny on MNIST", repo_id=hub_repo_id,
                           datasets=["hyperrep-org/mnist-zoo"], eval_results=results, tags=["mnist"],
                           training="Two views, 10 epochs.")
    check_model_card(card)
    path = save_model_card(card, tmp_path)
    meta = metadata_load(path)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "feature-extraction"
    assert meta["datasets"] == ["hyperrep-org/mnist-zoo"] and meta["metrics"] == ["r_squared"]
    assert {"sane", "hyperrep_hf", "mnist"} <= set(meta["tags"])
    name, parsed = model_index_to_eval_results(meta["model-index"])
    assert name == "SANE tiny on MNIST"
    assert [(r.metric_name, r.metric_value, r.dataset_type) for r in parsed] == [
        ("R^2 test_acc", 0.912, "hyperrep-org/mnist-zoo"), ("R^2 epoch", 0.85, "hyperrep-org/mnist-zoo")]
    body = path.read_text()
    assert f'AutoModel.from_pretrained("{hub_repo_id}")' in body and "| MNIST CNN-s zoo | test | R^2 epoch | 0.8500 |" in body
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in body
    # The Hub's YAML check accepts it, and the Hub serves it back. (Not card.push_to_hub, which
    # runs the check: huggingface_hub 1.x sends it to huggingface.co whatever HF_ENDPOINT says.)
    check = get_session().post(f"{constants.ENDPOINT}/api/validate-yaml", json={"content": str(card), "repoType": "model"})
    assert check.status_code == 200 and check.json()["errors"] == []
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_file(path_or_fileobj=str(path), path_in_repo="README.md", repo_id=hub_repo_id)
    assert ModelCard.load(hub_repo_id).data.to_dict() == card.data.to_dict()
    assert yaml.safe_load(open(hf_hub_download(hub_repo_id, "README.md")).read().split("---")[1])["license"] == "apache-2.0"


def test_card_check_rejects_bad_metadata(checkpoint):
    model, _, _ = checkpoint
    card = sane_model_card(model, model_name="SANE tiny")
    card.data.pipeline_tag = "weight-embedding"  # our pipeline's name, not a Hub task
    with pytest.raises(ValueError, match="pipeline_tag 'weight-embedding' is not a Hub task"):
        check_model_card(card)
    with pytest.raises(ValueError, match="R\\^2 of 'test_acc' must be a number"):
        probe_eval_results({"test_acc": "high"}, dataset="org/zoo")
    with pytest.raises(ValueError, match="SaneModel or SaneConfig"):
        sane_model_card(torch.nn.Linear(2, 2), model_name="x")
