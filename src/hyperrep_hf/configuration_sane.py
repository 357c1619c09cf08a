"""Configuration of the SANE hyper-representation model (Schürholt et al., ICML 2024).

This file imports only transformers so that it can be copied next to a checkpoint as remote code.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# Named sizes. "tiny" trains in minutes on a laptop CPU; "cnn" and "resnet18" are the published
# GPU sizes (METHOD.md §2). The position tables (n, l, k) bound the sequence length, the number of
# layers and the channels per layer of the models that can be tokenised.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        d_model=64, num_layers=2, num_heads=2, latent_dim=16, window_size=64, max_positions=(1024, 32, 512)
    ),
    "cnn": dict(
        d_model=1024, num_layers=8, num_heads=8, latent_dim=128, window_size=64, max_positions=(100, 10, 40)
    ),
    "resnet18": dict(
        token_size=288,
        d_model=2048,
        num_layers=8,
        num_heads=16,
        latent_dim=128,
        window_size=256,
        max_positions=(55000, 100, 550),
    ),
}


PROPERTY_KINDS = ("regression", "classification")
HEAD_POOLINGS = ("mean", "layer")


def check_properties(properties) -> list[dict]:
    """The property head's targets, normalised: a list of {"name", "kind": "regression", "mean", "std"}
    (the training targets' standardisation; a bare name means a regression with mean 0, std 1) or
    {"name", "kind": "classification", "labels": [...]} (the classes, in output order)."""
    if isinstance(properties, (str, bytes)) or not isinstance(properties, (list, tuple)) or not properties:
        raise ValueError(f"SaneConfig: properties must be a non-empty list of property names or "
                         f"{{'name', 'kind', ...}} entries, got {properties!r}.")
    out = []
    for entry in properties:
        entry = {"name": entry, "kind": "regression"} if isinstance(entry, str) else dict(entry)
        name, kind = entry.get("name"), entry.get("kind", "regression")
        if not isinstance(name, str) or not name:
            raise ValueError(f"SaneConfig: a property needs a name, got {entry!r}.")
        if kind not in PROPERTY_KINDS:
            raise ValueError(f"SaneConfig: property {name!r} has kind {kind!r}; choose one of {list(PROPERTY_KINDS)}.")
        if kind == "classification":
            labels = list(entry.get("labels") or [])
            if len(labels) < 2 or len({str(v) for v in labels}) != len(labels):
                raise ValueError(f"SaneConfig: classification property {name!r} needs at least 2 distinct labels, "
                                 f"got {labels!r}.")
            out.append({"name": name, "kind": kind, "labels": labels})
        else:
            mean, std = float(entry.get("mean", 0.0)), float(entry.get("std", 1.0))
            if not std > 0 or mean != mean:
                raise ValueError(f"SaneConfig: regression property {name!r} needs a finite mean and a std > 0, "
                                 f"got mean {mean}, std {std}.")
            out.append({"name": name, "kind": kind, "mean": mean, "std": std})
    names = [p["name"] for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"SaneConfig: properties must be distinct, got {names}.")
    return out


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SaneConfig: {name} must be a positive integer, got {value!r}.")
    return value


class SaneConfig(PretrainedConfig):
    r"""Configuration of a [`SaneModel`]: a transformer autoencoder over weight tokens.

    Args:
        token_size: values per weight token (T), e.g. 289 for the CIFAR CNN, 288 for ResNet-18.
        d_model: width of the encoder and decoder transformers; must be even (positions use halves)
            and divisible by `num_heads`.
        num_layers: transformer blocks in the encoder (the decoder has as many).
        num_heads: attention heads per block.
        latent_dim: per-token latent size of the bottleneck.
        max_positions: sizes (n, l, k) of the three position tables: tokens per sequence, layers per
            model, output channels per layer. Positions must be smaller than these.
        window_size: tokens per training window; the projection head flattens a window of latents,
            so shorter windows are zero-padded to it and longer ones get no projection.
        dropout: dropout in attention, MLP and after the embeddings.
        projection_dim: output size of the contrastive projection head.
        gamma: weight of the contrastive loss; the reconstruction loss gets 1 - gamma.
        temperature: NT-Xent temperature tau, stored as `contrastive_temperature` (transformers
            reserves a `temperature` attribute for text generation and refuses to save it).
        layer_loss_norm: divide each layer's reconstruction error by that layer's weight std sigma_l
            (layer-wise loss normalisation, METHOD.md §4); sigma_l lives in the model's
            `layer_sigma` buffer, ones until set with `SaneModel.set_layer_sigma` (which spread it
            holds, the standardised tokens' or the published raw weights', is the training option
            `layer_loss_norm`, recorded in training_args.json).
        mlp_ratio: hidden size of the transformer MLP relative to d_model.
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the normal init of linear and embedding weights.
        properties: the targets of a property head (`SaneForPropertyPrediction`), see
            `check_properties`; None for a plain SANE.
        head_pooling: what the head reads: "mean" (the mean token latent) or "layer" (each layer's
            mean latent, `head_layers` of them concatenated); both ignore the order of neurons.
        head_layers: layers "layer" pooling concatenates (the zoo architecture's; absent ones zero).
        head_hidden_dim: width of the head's hidden layer (0: a linear head).
        head_dropout: dropout before the head's layers.
        freeze_encoder: train only the head; the encoder keeps its pretrained weights.
        head_statistics: how many s(W) statistics of the raw weights (weightspace.statistics, 7 per
            tensor) the head reads beside the pooled latents; 0: none (the latents alone).
    """

    model_type = "sane"

    def __init__(
        self,
        token_size: int = 289,
        d_model: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        latent_dim: int = 128,
        max_positions: tuple[int, int, int] | list[int] = (1024, 32, 512),
        window_size: int = 256,
        dropout: float = 0.0,
        projection_dim: int = 30,
        gamma: float = 0.05,
        temperature: float = 0.1,
        layer_loss_norm: bool = True,
        mlp_ratio: int = 4,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        contrastive_temperature: float | None = None,
        properties: list | None = None,
        head_pooling: str = "mean",
        head_layers: int | None = None,
        head_hidden_dim: int = 0,
        head_dropout: float = 0.0,
        freeze_encoder: bool = False,
        head_statistics: int = 0,
        **kwargs,
    ):
        # A saved config.json carries `contrastive_temperature`; the argument users type is `temperature`.
        temperature = temperature if contrastive_temperature is None else contrastive_temperature
        self.token_size = _positive_int("token_size", token_size)
        self.d_model = _positive_int("d_model", d_model)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.num_heads = _positive_int("num_heads", num_heads)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.window_size = _positive_int("window_size", window_size)
        self.projection_dim = _positive_int("projection_dim", projection_dim)
        self.mlp_ratio = _positive_int("mlp_ratio", mlp_ratio)
        if d_model % 2:
            raise ValueError(
                f"SaneConfig: d_model must be even (the (n, l) and k position embeddings take one half "
                f"each), got {d_model}."
            )
        if d_model % num_heads:
            raise ValueError(
                f"SaneConfig: d_model ({d_model}) must be divisible by num_heads ({num_heads}); "
                f"try num_heads in {[h for h in range(1, 17) if d_model % h == 0]}."
            )
        if isinstance(max_positions, (str, bytes)) or len(tuple(max_positions)) != 3:
            raise ValueError(
                f"SaneConfig: max_positions must be three table sizes (n, l, k), got {max_positions!r}."
            )
        self.max_positions = tuple(_positive_int(f"max_positions[{i}]", v) for i, v in enumerate(max_positions))
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"SaneConfig: dropout must be in [0, 1), got {dropout!r}.")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"SaneConfig: gamma (contrastive weight) must be in [0, 1], got {gamma!r}.")
        if not float(temperature) > 0.0:
            raise ValueError(f"SaneConfig: temperature must be > 0, got {temperature!r}.")
        if not float(layer_norm_eps) > 0.0:
            raise ValueError(f"SaneConfig: layer_norm_eps must be > 0, got {layer_norm_eps!r}.")
        self.dropout = float(dropout)
        self.gamma = float(gamma)
        self.contrastive_temperature = float(temperature)
        self.layer_loss_norm = bool(layer_loss_norm)
        self.layer_norm_eps = float(layer_norm_eps)
        self.initializer_range = float(initializer_range)
        self.properties = None if properties is None else check_properties(properties)
        if head_pooling not in HEAD_POOLINGS:
            raise ValueError(f"SaneConfig: head_pooling must be one of {list(HEAD_POOLINGS)}, got {head_pooling!r}.")
        if head_pooling == "layer" and head_layers is None:
            raise ValueError("SaneConfig: head_pooling='layer' needs head_layers, the zoo architecture's number of layers.")
        self.head_pooling, self.head_layers = head_pooling, None if head_layers is None else _positive_int("head_layers", head_layers)
        if isinstance(head_hidden_dim, bool) or not isinstance(head_hidden_dim, int) or head_hidden_dim < 0:
            raise ValueError(f"SaneConfig: head_hidden_dim must be an integer >= 0, got {head_hidden_dim!r}.")
        if not 0.0 <= float(head_dropout) < 1.0:
            raise ValueError(f"SaneConfig: head_dropout must be in [0, 1), got {head_dropout!r}.")
        self.head_hidden_dim, self.head_dropout, self.freeze_encoder = head_hidden_dim, float(head_dropout), bool(freeze_encoder)
        if isinstance(head_statistics, bool) or not isinstance(head_statistics, int) or head_statistics < 0:
            raise ValueError(f"SaneConfig: head_statistics must be an integer >= 0, got {head_statistics!r}.")
        self.head_statistics = head_statistics
        if __name__.startswith("hyperrep_hf."):
            # config.json names the checkpoint's remote-code pipelines for users without hyperrep_hf.
            # With the package installed its registered pipelines serve those tasks, and transformers
            # would demand trust_remote_code for any task listed here: drop the entry.
            kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SaneConfig:
        """A named size ("tiny", "cnn", "resnet18") with any field overridden, e.g.
        `SaneConfig.from_preset("tiny", token_size=201)`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown SANE preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


# Written into config.json's `auto_map` (with the file copied) for remote-code loading.
SaneConfig.register_for_auto_class()

__all__ = ["HEAD_POOLINGS", "PRESETS", "PROPERTY_KINDS", "SaneConfig", "check_properties"]
