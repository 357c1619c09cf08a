"""A zoo of Hub model repos (local Hub server): one row per repo, the revision pinned in `source`."""

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

from hyperrep_hf.zoo import build_model, import_zoo


def _push_bert(tmp_path, hub_server, name, seed):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=30, max_position_embeddings=16)
    model = BertModel(config).eval()
    repo_id = hub_server.new_repo_id(name)
    HfApi().create_repo(repo_id)
    model.save_pretrained(tmp_path / name)
    (tmp_path / name / "README.md").write_text("a tiny bert\n")
    sha = HfApi().upload_folder(folder_path=tmp_path / name, repo_id=repo_id).oid
    return repo_id, sha, model


def test_hub_transformers_models_become_a_zoo_pinned_to_their_commits(tmp_path, hub_server):
    pushed = [_push_bert(tmp_path, hub_server, f"bert-{i}", i) for i in range(3)]
    ids_file = tmp_path / "models.txt"
    # the first repo is read at its first commit although main has moved on since
    first_sha = pushed[0][1]
    HfApi().upload_file(path_or_fileobj=b"changed\n", path_in_repo="README.md", repo_id=pushed[0][0])
    ids_file.write_text(f"# the zoo\n{pushed[0][0]}@{first_sha}\n" + "\n".join(r for r, _, _ in pushed[1:]) + "  # two more\n")
    zoo = import_zoo("hub-models", None, tmp_path / "zoo", models=[str(ids_file)], progress=False)
    assert zoo.architecture == "transformers" and zoo.architecture_kwargs["config"]["model_type"] == "bert"
    by_source = {f"{r}@{sha}": m for r, sha, m in pushed}
    ids = torch.tensor([[1, 5, 7, 2]])
    seen = []
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            seen.append(row["source"])
            assert row["epoch"] == 0
            built = zoo.build_model(row)
            torch.testing.assert_close(built(ids).last_hidden_state, by_source[row["source"]](ids).last_hidden_state)
    assert sorted(seen) == sorted(by_source)
    assert zoo.config["models"] == [f"{r}@{sha}" for r, sha, _ in pushed]


def test_bare_safetensors_repos_with_a_registered_architecture(tmp_path, hub_server):
    states = {}
    for i in range(3):
        torch.manual_seed(i)
        sd = build_model("mlp", in_features=6, hidden=[4], num_classes=2).state_dict()
        repo_id = hub_server.new_repo_id(f"mlp-{i}")
        HfApi().create_repo(repo_id)
        save_file(sd, tmp_path / "model.safetensors")
        HfApi().upload_file(path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors", repo_id=repo_id)
        states[repo_id] = sd
    zoo = import_zoo("hub-models", None, tmp_path / "zoo", models=list(states), architecture="mlp",
                     architecture_kwargs={"in_features": 6, "hidden": [4], "num_classes": 2}, progress=False)
    for split in zoo.dataset:
        for row in zoo.dataset[split]:
            model = zoo.build_model(row)
            for k, v in states[row["source"].split("@")[0]].items():
                torch.testing.assert_close(model.state_dict()[k], v)


def test_bad_hub_model_lists_are_named(tmp_path, hub_server):
    repo_id, _, _ = _push_bert(tmp_path, hub_server, "bert-x", 0)
    with pytest.raises(ValueError, match=r"no Hub models given: pass --models org/name"):
        import_zoo("hub-models", None, tmp_path / "zoo", models=[], progress=False)
    with pytest.raises(ValueError, match=r"'justaname' is not a Hub model id: expected org/name"):
        import_zoo("hub-models", None, tmp_path / "zoo", models=["justaname"], progress=False)
    with pytest.raises(ValueError, match=rf"Hub model {hub_server.user}/no-such-repo: not found"):
        import_zoo("hub-models", None, tmp_path / "zoo", models=[repo_id, f"{hub_server.user}/no-such-repo"], progress=False)
    with pytest.raises(ValueError, match=r"Hub model .*bert-x-.*@[0-9a-f]{40}: does not fit architecture mlp: tensor 0 of the model, 'embeddings.word_embeddings.weight' of shape \[30, 8\], differs from the layout, which expects '1.weight'"):
        import_zoo("hub-models", None, tmp_path / "zoo", models=[repo_id], architecture="mlp", progress=False)
    assert not (tmp_path / "zoo").exists()
