"""The training data pipeline reads zoos lazily: only a batch's rows, only a window's tokens.

Batches, standardisation and LWLN statistics must equal those of the eager path (every split read
as one [rows, P] tensor, whole permuted models tokenised, then the window cut), which
`eager_training_batch` spells out with the public pieces.
"""

import numpy as np
import pytest
import torch

from hyperrep_hf.layout import WeightLayout
from hyperrep_hf.tokenization_weights import TokenLayout
from hyperrep_hf.training import Augmentation, ZooData
from hyperrep_hf.training import data as data_module
from hyperrep_hf.weightspace import permute_flat
from hyperrep_hf.windows import random_window_starts, take_windows
from hyperrep_hf.zoo import build_model, load_zoo
from hyperrep_hf.zoo.dataset import Zoo, ZooRows, _Shards
from hyperrep_hf.zoo.importers.writer import model_splits, write_zoo


def synthetic_zoo(out, architecture, kwargs, num_models, epochs=2, seed=0):
    """A zoo of random weights (BatchNorm variances positive) written with the importers' writer."""
    model = build_model(architecture, **kwargs)
    layout = WeightLayout.from_state_dict(model.state_dict())
    var = torch.zeros(layout.num_weights, dtype=torch.bool)
    for e, o in zip(layout.entries, layout.offsets):
        if e.name.endswith("running_var"):
            var[o:o + e.numel] = True

    def rows(i):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        for epoch in range(epochs):
            w = torch.randn(layout.num_weights, generator=g) * (0.5 + 0.1 * epoch)
            w[var] = w[var].abs()
            yield {"epoch": epoch, "weights": w.numpy(), "source": f"random-{i}", "test_acc": float(i % 5) / 5}

    info = {"name": "synthetic", "architecture": architecture, "architecture_kwargs": kwargs, "task": None, "config": {}}
    return write_zoo(out, info, list(range(num_models)), model_splits(num_models, seed, "synthetic"), rows,
                     layout=layout, extra_columns={"source": "string"}, fingerprint={"synthetic": str(out)},
                     progress=False)


@pytest.fixture(autouse=True)
def lazy_splits(monkeypatch):
    """Every split read lazily, however small (by default one that fits IN_MEMORY_SPLIT_BYTES is a tensor)."""
    monkeypatch.setattr(data_module, "IN_MEMORY_SPLIT_BYTES", 0)


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    return (synthetic_zoo(root / "resnet", "resnet18", {"width": 4}, 10),
            synthetic_zoo(root / "vgg", "vgg-s", {"widths": [8, 16, 16]}, 7, seed=1))


def eager_training_batch(data, rows, window_size, generator, aug):
    """The eager path: whole rows, whole permuted models tokenised, then one window cut."""
    views = [[], []]
    for g, local in data.locate("train", rows):
        flat = g.zoo.weights("train")[torch.as_tensor(g.splits["train"].weights.index)][local]
        for v in range(2):
            w = flat
            if aug.permutes(v) and g.spec is not None:
                w = permute_flat(flat, g.zoo.layout, g.spec, g.spec.random(len(flat), generator))
            enc = data.tokenizer.tokenize_flat(w, g.layout_id, align=False)
            views[v].append({k: enc[k] for k in ("tokens", "positions", "attention_mask", "value_mask")})
    N = max(p["tokens"].shape[1] for v in views for p in v)
    padded = [{k: torch.cat([torch.nn.functional.pad(p[k], (0, 0) * (p[k].dim() - 2) + (0, N - p[k].shape[1]))
                             for p in v]) for k in v[0]} for v in views]
    lengths = padded[0]["attention_mask"].sum(1)
    window = min(window_size, int(lengths.max()))
    starts = random_window_starts(lengths, window, generator)
    cut = [{k: take_windows(v[k], starts, window) for k in v} for v in padded]
    targets = torch.cat([c["tokens"] for c in cut])
    value_mask = torch.cat([c["value_mask"] for c in cut])
    inputs = data_module._augment(targets, value_mask, aug, generator)
    return inputs, targets, torch.cat([c["positions"] for c in cut]), torch.cat([c["attention_mask"] for c in cut]), value_mask


def test_lazy_batches_and_statistics_equal_the_eager_path(zoos):
    data = ZooData.from_zoos(list(zoos), token_size=32)
    assert all(isinstance(g.splits[s].weights, ZooRows) for g in data.groups for s in ("train", "validation"))
    assert [g.num_tokens for g in data.groups] == [len(TokenLayout(g.zoo.layout, g.token_layout.layers, 32).positions)
                                                   for g in data.groups]
    for g in data.groups:  # the standardisation fitted chunk by chunk equals the fit on the whole split
        whole = g.zoo.weights("train")[torch.as_tensor(g.splits["train"].weights.index)]
        eager = ZooData.from_zoos([g.zoo], token_size=32, standardize=False).tokenizer
        eager.fit_standardization(whole)
        assert torch.equal(eager.layouts[0].mean, g.token_layout.mean)
        assert torch.equal(eager.layouts[0].std, g.token_layout.std)
    sigma = data.token_statistics("standardized")
    enc = [data.tokenizer.tokenize_flat(g.zoo.weights("train"), g.layout_id) for g in data.groups]
    for layer in (0, 5, data.num_layers - 1):
        values = torch.cat([e["tokens"][(e["positions"][..., 1] == layer)][e["value_mask"][e["positions"][..., 1] == layer]]
                            for e in enc]).double()
        assert sigma[layer].item() == pytest.approx(values.std(correction=0).item(), rel=1e-6)
    n = data.num_rows("train")
    for views, window in [("permuted-both", 40), ("stored-and-permuted", 5000), ("stored-both", 7)]:
        aug = Augmentation(views, multiplicative_noise=0.1, additive_noise=0.05, erase_probability=0.2)
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(window))[:9]
        lazy = data.training_batch(rows, window, torch.Generator().manual_seed(1), aug)
        eager = eager_training_batch(data, rows, window, torch.Generator().manual_seed(1), aug)
        for name, a, b in zip(("tokens", "targets", "positions", "attention_mask", "value_mask"),
                              (lazy.tokens, lazy.targets, lazy.positions, lazy.attention_mask, lazy.value_mask), eager):
            assert torch.equal(a, b), (views, window, name)


def test_a_batch_reads_only_its_rows_and_tokenises_only_its_window(zoos, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the zoo was copied into datasets' cache"))
    zoo = load_zoo(zoos[0].path)
    monkeypatch.setattr(Zoo, "weights", lambda *a: pytest.fail("the lazy path read a whole split"))
    data = ZooData.from_zoos([zoo])
    split = data.groups[0].splits["train"]
    assert isinstance(split.weights, ZooRows) and len(split) == zoo.num_rows("train")
    zoo.row_cache.clear()
    zoo.row_cache.max_bytes = 0  # keep nothing: every read decodes, so reads are counted
    read, tokenised = [], []
    real_read, real_range = _Shards.read, TokenLayout.encode_range_into
    monkeypatch.setattr(_Shards, "read", lambda self, r: read.extend(r.tolist()) or real_read(self, r))
    monkeypatch.setattr(TokenLayout, "encode_into", lambda *a: pytest.fail("a whole model was tokenised"))
    monkeypatch.setattr(TokenLayout, "encode_range_into",
                        lambda self, t, f, a, b, s: tokenised.append(b - a) or real_range(self, t, f, a, b, s))
    rows = torch.tensor([5, 0, 11, 3])
    batch = data.training_batch(rows, 64, torch.Generator().manual_seed(0), Augmentation())
    assert sorted(read) == sorted(split.weights.index[rows.numpy()].tolist())  # each row once, no other
    assert sum(tokenised) == 2 * 4 * 64 and batch.tokens.shape == (8, 64, 288)
    assert zoo.row_cache.nbytes == 0 and zoo.row_cache.reads >= 1


def test_zoo_rows_index_like_the_whole_split(zoos):
    zoo = zoos[1]
    whole, rows = zoo.weights("train"), zoo.rows("train")
    assert rows.shape == tuple(whole.shape) and len(rows.select(np.arange(len(rows)) % 2 == 0)) == (len(rows) + 1) // 2
    idx = torch.tensor([2, 0, 1])
    assert torch.equal(rows[idx], whole[idx]) and torch.equal(rows[1], whole[1]) and torch.equal(rows[1:3], whole[1:3])
    assert torch.equal(rows.select(idx)[1:], whole[idx][1:])
    assert torch.equal(torch.cat(list(rows.chunks(max_bytes=1))), whole)
    with pytest.raises(ValueError, match="no split 'dev'"):
        zoo.rows("dev")


def test_a_batch_too_large_for_memory_names_the_options(zoos, monkeypatch):
    data = ZooData.from_zoos([zoos[0]])
    monkeypatch.setattr(data_module, "_available_memory", lambda: 10 << 20)
    with pytest.raises(ValueError, match="lower --batch_size or --window_size"):
        data.training_batch(torch.arange(8), 256, torch.Generator().manual_seed(0), Augmentation())


def test_embedding_streams_slices_and_permutes_tokens_instead_of_retokenising(zoos, monkeypatch):
    from hyperrep_hf import SaneConfig, SaneModel
    from hyperrep_hf.downstream import embedding
    from hyperrep_hf.downstream.evaluation import zoo_features

    zoo = zoos[0]
    data = ZooData.from_zoos([zoo])
    tokenizer, layout = data.tokenizer, data.tokenizer.layouts[0]
    torch.manual_seed(0)
    sane = SaneModel(SaneConfig.from_preset("tiny", token_size=layout.token_size, window_size=256,
                                            max_positions=(layout.num_tokens, layout.num_layers, 512))).eval()
    whole = zoo.weights("test")
    # one model's tokens a chunk: every read holds one row, never the split
    monkeypatch.setattr(embedding, "EMBED_TOKEN_BYTES", 4 * layout.num_tokens * layout.token_size)
    reads, calls = [], []
    real_read, real_tokenize = _Shards.read, type(tokenizer).tokenize_flat
    monkeypatch.setattr(_Shards, "read", lambda self, r, cache=True: reads.append(len(r)) or real_read(self, r, cache))
    monkeypatch.setattr(type(tokenizer), "tokenize_flat", lambda self, w, *a, **k: calls.append(len(w)) or real_tokenize(self, w, *a, **k))
    lazy = zoo_features(zoo, "test", "sane", sane, tokenizer, permutations=2)
    # after the finiteness pass (64 MB slices), the embedding reads a row at a time
    assert reads[-len(whole):] == [1] * len(whole) and sum(reads) == 2 * len(whole)
    assert sum(calls) == len(whole)  # tokenised once per model, not once per permutation
    monkeypatch.setattr(embedding.TokenPermutation, "applies", staticmethod(lambda *a: False))
    retokenised = embedding.embed_flat(sane, tokenizer, whole, permutations=2)
    assert torch.equal(lazy, retokenised) and sum(calls) == 3 * len(whole)
    stats = zoo_features(zoo, "test", "stats")
    from hyperrep_hf.weightspace.statistics import weight_statistics

    assert torch.equal(stats, weight_statistics(whole, zoo.layout)[0])
