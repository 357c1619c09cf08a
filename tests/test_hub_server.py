"""Round trips through the local Hub (tests/hub_server.py) with the real clients.

These tests pin down that the server speaks the protocol huggingface_hub, transformers and
datasets expect, so other tests can rely on push_to_hub -> from_pretrained / load_dataset.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import (
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


@pytest.fixture
def api(hub_server):
    return HfApi()


def test_session_points_every_client_at_the_local_hub(hub_server):
    from huggingface_hub import constants

    assert os.environ["HF_ENDPOINT"] == hub_server.endpoint
    assert constants.ENDPOINT == hub_server.endpoint
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])
    assert not constants.HF_HUB_OFFLINE
    assert HfApi().whoami()["name"] == hub_server.user


def test_whoami_rejects_a_wrong_token(hub_server):
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token="hf_not_the_right_one").whoami()
    assert info.value.response.status_code == 401


def test_upload_file_then_download_it_into_the_cache(api, hub_repo_id, hub_server):
    url = api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id
    info = api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="sub/cfg.json",
                           repo_id=hub_repo_id, commit_message="add cfg")

    path = hf_hub_download(hub_repo_id, "sub/cfg.json")
    assert json.load(open(path)) == {"a": 1}
    # Cache layout: snapshots/<commit>/..., refs/main holds the commit of `main`.
    assert f"snapshots/{info.oid}/sub/cfg.json" in path
    refs_main = os.path.join(path.split("/snapshots/")[0], "refs", "main")
    assert open(refs_main).read() == info.oid
    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "sub/cfg.json"]
    assert [c.title for c in api.list_repo_commits(hub_repo_id)] == ["add cfg", "initial commit"]


def test_safetensors_go_through_lfs_and_come_back_identical(api, hub_repo_id, hub_server,
                                                             tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    save_file(tensors, tmp_path / "model.safetensors")
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=tmp_path / "model.safetensors",
                    path_in_repo="model.safetensors", repo_id=hub_repo_id)

    assert hub_server.is_lfs(hub_repo_id, "model.safetensors")
    (entry,) = api.get_paths_info(hub_repo_id, ["model.safetensors"])
    assert entry.lfs is not None and entry.lfs.size == (tmp_path / "model.safetensors").stat().st_size
    back = load_file(hf_hub_download(hub_repo_id, "model.safetensors"))
    assert torch.equal(back["w"], tensors["w"])


def test_upload_folder_snapshot_download_and_missing_files(api, hub_repo_id, tmp_path):
    folder = tmp_path / "model"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_text('{"k": 2}')
    (folder / "nested" / "notes.txt").write_text("hello")
    api.create_repo(hub_repo_id)
    api.upload_folder(folder_path=folder, repo_id=hub_repo_id)

    local = snapshot_download(hub_repo_id)
    assert open(os.path.join(local, "nested", "notes.txt")).read() == "hello"
    assert api.file_exists(hub_repo_id, "config.json")
    assert not api.file_exists(hub_repo_id, "missing.json")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id + "-absent", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, "config.json", revision="no-such-branch")
    names = sorted(e.path for e in api.list_repo_tree(hub_repo_id, recursive=True))
    assert names == [".gitattributes", "config.json", "nested", "nested/notes.txt"]


def test_paths_with_spaces_and_non_ascii_characters(api, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj="ü".encode(), path_in_repo="dir ä/naïve file.txt",
                    repo_id=hub_repo_id)
    assert open(hf_hub_download(hub_repo_id, "dir ä/naïve file.txt")).read() == "ü"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "dir ä/ständig.txt")
    assert [e.path for e in api.list_repo_tree(hub_repo_id, "dir ä")] == ["dir ä/naïve file.txt"]


def test_revisions_branches_and_tags(api, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=hub_repo_id)
    api.create_tag(hub_repo_id, tag="v1")
    api.create_branch(hub_repo_id, branch="dev")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id=hub_repo_id,
                    revision="dev")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=hub_repo_id)

    def read(revision):
        return open(hf_hub_download(hub_repo_id, "f.txt", revision=revision)).read()

    assert (read("main"), read("v1"), read("dev")) == ("v2", "v1", "dev")
    first = api.list_repo_commits(hub_repo_id, revision="v1")[0].commit_id
    assert read(first) == "v1"
    assert api.model_info(hub_repo_id, revision="v1").sha == first
    refs = api.list_repo_refs(hub_repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [t.name for t in refs.tags] == ["v1"]


def test_delete_repo(api, hub_repo_id):
    api.create_repo(hub_repo_id, repo_type="dataset")
    assert api.repo_exists(hub_repo_id, repo_type="dataset")
    assert not api.repo_exists(hub_repo_id)  # same id, other repo type
    api.delete_repo(hub_repo_id, repo_type="dataset")
    assert not api.repo_exists(hub_repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(hub_repo_id, repo_type="dataset")
    api.delete_repo(hub_repo_id, repo_type="dataset", missing_ok=True)


def test_transformers_push_to_hub_then_from_pretrained_in_a_fresh_process(hub_repo_id,
                                                                          hub_server):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertModel(config)
    model.push_to_hub(hub_repo_id)
    assert hub_server.is_lfs(hub_repo_id, "model.safetensors")

    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(sys.argv[1])\n"
        "print(type(m).__name__, repr(m.embeddings.word_embeddings.weight.sum().item()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, hub_repo_id], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    name, total = out.stdout.split()
    assert name == "BertModel"
    with torch.no_grad():
        assert float(total) == model.embeddings.word_embeddings.weight.sum().item()


def test_datasets_push_to_hub_then_load_dataset(hub_repo_id, hub_server):
    from datasets import Dataset, DatasetDict, Features, List, Value, load_dataset

    dim = 6
    features = Features({"weights": List(Value("float32"), length=dim),
                         "accuracy": Value("float32")})
    rng = np.random.default_rng(0)

    def zoo(n):
        return Dataset.from_dict({"weights": rng.random((n, dim), dtype=np.float32),
                                  "accuracy": rng.random(n, dtype=np.float32)},
                                 features=features)

    zoos = DatasetDict(train=zoo(12), test=zoo(5))
    zoos.push_to_hub(hub_repo_id)
    files = hub_server.repo_files(hub_repo_id, repo_type="dataset")
    parquet = [p for p in files if p.endswith(".parquet")]
    assert len(parquet) == 2 and all(
        hub_server.is_lfs(hub_repo_id, p, repo_type="dataset") for p in parquet)

    loaded = load_dataset(hub_repo_id)
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features == features
    np.testing.assert_array_equal(np.asarray(loaded["test"]["weights"][:]),
                                  np.asarray(zoos["test"]["weights"][:]))

    streamed = next(iter(load_dataset(hub_repo_id, split="train", streaming=True)))
    np.testing.assert_array_equal(streamed["weights"], zoos["train"][0]["weights"])

    # A second version on a branch leaves `main` as it was.
    DatasetDict(train=zoo(3), test=zoo(2)).push_to_hub(hub_repo_id, revision="v2")
    assert load_dataset(hub_repo_id, revision="v2")["train"].num_rows == 3
    assert load_dataset(hub_repo_id)["train"].num_rows == 12


def test_olah_mirror_serves_model_and_dataset_folders_to_the_hub_clients(olah_mirror, tmp_path):
    from datasets import Dataset
    from transformers import BertConfig

    model = tmp_path / "tiny-bert"
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16, vocab_size=30).save_pretrained(model)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4)
    olah_mirror.add_repo("mirror-org/tiny-bert", model)
    zoo = tmp_path / "zoo"
    (zoo / "data").mkdir(parents=True)
    (zoo / "README.md").write_text("---\nlicense: mit\n---\n")  # see tests/olah_mirror.py
    Dataset.from_dict({"weights": [[1.0, 2.0], [3.0, 4.0]]}).to_parquet(
        zoo / "data" / "train-00000-of-00001.parquet")
    olah_mirror.add_repo("mirror-org/zoo", zoo, repo_type="dataset")

    script = (
        "import os\n"
        "from datasets import load_dataset\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "from huggingface_hub.errors import HfHubHTTPError\n"
        "from transformers import AutoConfig\n"
        "local = snapshot_download('mirror-org/tiny-bert')\n"
        "data = open(hf_hub_download('mirror-org/tiny-bert', 'weights.bin'), 'rb').read()\n"
        "try:\n"
        "    hf_hub_download('mirror-org/tiny-bert', 'missing.json')\n"
        "except HfHubHTTPError as err:\n"
        "    status = err.response.status_code\n"
        "config = AutoConfig.from_pretrained('mirror-org/tiny-bert')\n"
        "print(sorted(os.listdir(local)), data == bytes(range(256)) * 4, status,\n"
        "      config.model_type, config.hidden_size)\n"
        "print(load_dataset('mirror-org/zoo', split='train')['weights'][:])\n"
    )
    env = {**os.environ, "HF_ENDPOINT": olah_mirror.endpoint}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # olah answers 401 (not 404 EntryNotFound) for a missing file: see tests/olah_mirror.py.
    assert out.stdout.splitlines()[:2] == ["['config.json', 'weights.bin'] True 401 bert 8",
                                           "[[1.0, 2.0], [3.0, 4.0]]"]


def test_error_answers_leave_the_keep_alive_connection_usable(hub_server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", hub_server.port, timeout=10)
    body = json.dumps({"name": "x" * 5000})
    conn.request("POST", "/api/repos/create", body=body,
                 headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
    first = conn.getresponse()
    first.read()
    conn.request("POST", "/api/no/such/route", body=b"y" * 5000)
    second = conn.getresponse()
    second.read()
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {hub_server.token}"})
    third = conn.getresponse()
    assert (first.status, second.status, third.status) == (401, 404, 200)
    assert json.loads(third.read())["name"] == hub_server.user
    conn.close()


def test_resolve_answers_range_requests(api, hub_repo_id, hub_server):
    import urllib.error
    import urllib.request

    from huggingface_hub import HfFileSystem

    data = bytes(range(200))
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id=hub_repo_id)
    url = f"{hub_server.endpoint}/{hub_repo_id}/resolve/main/blob.bin"

    def get(byte_range):
        request = urllib.request.Request(url, headers={"Range": byte_range})
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers["Content-Range"], response.read()

    assert get("bytes=10-19") == (206, "bytes 10-19/200", data[10:20])
    assert get("bytes=195-") == (206, "bytes 195-199/200", data[195:])
    assert get("bytes=-3") == (206, "bytes 197-199/200", data[-3:])
    with pytest.raises(urllib.error.HTTPError) as info:
        get("bytes=500-")
    assert info.value.code == 416
    with HfFileSystem().open(f"{hub_repo_id}/blob.bin", "rb") as handle:
        handle.seek(50)
        assert handle.read(5) == data[50:55]


def test_big_files_use_lfs_and_unchanged_files_make_no_commit(api, hub_repo_id, hub_server):
    api.create_repo(hub_repo_id)
    big = b"0123456789abcdef" * (10 * 1024 * 1024 // 16)  # exactly 10 MiB of text
    api.upload_file(path_or_fileobj=big, path_in_repo="big.txt", repo_id=hub_repo_id)
    api.upload_file(path_or_fileobj=b"small", path_in_repo="small.txt", repo_id=hub_repo_id)
    assert hub_server.is_lfs(hub_repo_id, "big.txt")
    assert not hub_server.is_lfs(hub_repo_id, "small.txt")
    before = len(api.list_repo_commits(hub_repo_id))

    # The client skips files whose remote oid (from preupload) matches: no empty commit.
    api.upload_file(path_or_fileobj=big, path_in_repo="big.txt", repo_id=hub_repo_id)
    api.upload_file(path_or_fileobj=b"small", path_in_repo="small.txt", repo_id=hub_repo_id)
    assert len(api.list_repo_commits(hub_repo_id)) == before
    assert hub_server.repo_files(hub_repo_id)["big.txt"] == big


def test_delete_files_and_folders_and_last_commit_info(api, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="keep.txt", repo_id=hub_repo_id,
                    commit_message="add keep")
    api.upload_file(path_or_fileobj=b"b", path_in_repo="dir/x.txt", repo_id=hub_repo_id)
    api.upload_file(path_or_fileobj=b"c", path_in_repo="dir/y.txt", repo_id=hub_repo_id)
    api.delete_file("dir/x.txt", repo_id=hub_repo_id)
    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "dir/y.txt", "keep.txt"]
    api.delete_folder("dir", repo_id=hub_repo_id)
    assert api.list_repo_files(hub_repo_id) == [".gitattributes", "keep.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("dir/y.txt", repo_id=hub_repo_id)

    (entry,) = api.get_paths_info(hub_repo_id, ["keep.txt"], expand=True)
    assert entry.last_commit.title == "add keep"  # the commit that changed it, not the head


def test_private_repos_and_writes_need_the_token(api, hub_repo_id):
    api.create_repo(hub_repo_id, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="f.txt", repo_id=hub_repo_id)
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, "f.txt", token=False)
    assert api.model_info(hub_repo_id).private
    with pytest.raises(HfHubHTTPError) as info:
        anonymous.create_repo(hub_repo_id + "-anon")
    assert info.value.response.status_code == 401


def test_commit_on_a_stale_parent_is_refused(api, hub_repo_id):
    from huggingface_hub import CommitOperationAdd

    api.create_repo(hub_repo_id)
    stale = api.model_info(hub_repo_id).sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="f.txt", repo_id=hub_repo_id)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(hub_repo_id, [CommitOperationAdd("g.txt", b"2")],
                          commit_message="late", parent_commit=stale)
    assert info.value.response.status_code == 412


def test_new_repo_ids_are_unique_and_valid(hub_server):
    from huggingface_hub.utils import validate_repo_id

    ids = {hub_server.new_repo_id("odd name--[x]..v1") for _ in range(20)}
    assert len(ids) == 20
    for repo_id in ids:
        validate_repo_id(repo_id)
        assert repo_id.startswith(f"{hub_server.user}/odd-name-x-v1-")
    assert hub_server.new_repo_id("zoo", namespace="hyperrep-org").startswith("hyperrep-org/zoo-")


def test_conftest_guard_fails_tests_that_leave_offline_mode_on(tmp_path):
    # A fresh pytest session with this conftest: it also checks the environment set-up from scratch.
    here = os.path.dirname(__file__)
    for name in ("conftest.py", "hub_server.py", "olah_mirror.py"):
        (tmp_path / name).write_text(open(os.path.join(here, name)).read())
    (tmp_path / "test_probe.py").write_text(
        "import os\n"
        "def test_fresh_session_uses_the_local_hub():\n"
        "    from huggingface_hub import constants\n"
        "    assert constants.ENDPOINT.startswith('http://127.0.0.1:')\n"
        "def test_leaks_env():\n"
        "    os.environ['HF_HUB_OFFLINE'] = '1'\n"
        "def test_leaks_flag():\n"
        "    import huggingface_hub.constants as constants\n"
        "    constants.HF_HUB_OFFLINE = True\n"
        "def test_monkeypatch_is_fine(monkeypatch):\n"
        "    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')\n"
        "def test_later_tests_are_online_again():\n"
        "    import huggingface_hub.constants as constants\n"
        "    assert 'HF_HUB_OFFLINE' not in os.environ and not constants.HF_HUB_OFFLINE\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the conftest must switch it off again
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert "5 passed, 2 errors" in out.stdout, out.stdout[-3000:]
    assert "(HF_HUB_OFFLINE)" in out.stdout
    assert "(huggingface_hub.constants.HF_HUB_OFFLINE)" in out.stdout
