"""SANE: a transformer autoencoder over weight tokens (Schürholt et al., ICML 2024; METHOD.md §2).

A model's weights arrive as a sequence of tokens [N, token_size] with positions (n, l, k) = (index in
the sequence, layer, output channel). The encoder maps every token to a latent vector; the decoder
maps latents back to tokens. Embeddings of whole models are pooled latents.

This file imports only torch, transformers and its sibling modules (copied with a checkpoint as
remote code), so a saved checkpoint loads with `trust_remote_code=True` without hyperrep_hf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.utils import ModelOutput

from .configuration_sane import SaneConfig
from .losses import SIGMA_FLOOR, masked_reconstruction_mse, nt_xent, sane_loss
from .windows import sliding_windows

POOLINGS = ("mean", "layer", "full")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    return pooling


def pool_latents(latents: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean",
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """Token latents [B, N, L] -> one vector per model.

    "mean": mean over the real tokens [B, L]. "layer": the mean over each layer's real tokens,
    layers concatenated [B, num_layers * L] (a layer a row lacks is zero); it needs `positions`
    [B, N, 3] for the layer index and, like "mean", does not change when neurons are permuted within
    a layer. "full": the whole sequence [B, N * L] (padded tokens zero).
    """
    check_pooling(pooling)
    if pooling == "full":
        return latents.flatten(1)
    mask = torch.ones(latents.shape[:2], device=latents.device) if attention_mask is None else attention_mask
    mask = torch.as_tensor(mask).to(latents.device, latents.dtype)
    if pooling == "mean":
        return (latents * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    if positions is None:
        raise ValueError("pooling='layer' needs the tokens' positions (their layer index)")
    layer = torch.as_tensor(positions)[..., 1].to(latents.device)
    num_layers = int(layer[mask.bool()].max()) + 1
    members = F.one_hot(layer, num_layers).to(latents.dtype) * mask.unsqueeze(-1)  # [B, N, num_layers]
    sums = torch.einsum("bnl,bnd->bld", members, latents)
    return (sums / members.sum(1).clamp_min(1).unsqueeze(-1)).flatten(1)


@dataclass
class SaneOutput(ModelOutput):
    """Output of `SaneModel.forward`.

    Attributes:
        loss: 0-d total loss, only when `targets` were given.
        latents: [B, N, latent_dim] per-token latents (zero at padded tokens).
        reconstruction: [B, N, token_size] decoded tokens (zero at padded tokens).
        projection: [B, projection_dim] contrastive projection; None when N > window_size.
        reconstruction_loss: 0-d masked (layer-normalised) reconstruction MSE, with `targets`.
        contrastive_loss: 0-d NT-Xent over the two views, with `targets` and `num_views=2`.
    """

    loss: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    projection: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None


class SanePositionEmbedding(nn.Module):
    """(n, l, k) -> [pe_n(n) + pe_l(l), pe_k(k)]: each table is d_model/2 wide."""

    def __init__(self, config: SaneConfig):
        super().__init__()
        half = config.d_model // 2
        max_n, max_l, max_k = config.max_positions
        self.pe_n = nn.Embedding(max_n, half)
        self.pe_l = nn.Embedding(max_l, half)
        self.pe_k = nn.Embedding(max_k, half)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] long -> [B, N, d_model]."""
        n, layer, k = positions.unbind(-1)
        return torch.cat([self.pe_n(n) + self.pe_l(layer), self.pe_k(k)], dim=-1)


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v spelled out, with the signature of transformers' attention interface.

    query, key, value [B, H, N, d]; attention_mask None or bool [B, 1, 1, N] (True = key may be
    attended) -> (output [B, N, H, d], attention weights [B, H, N, N]).
    """
    scores = query @ key.transpose(-2, -1) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = F.dropout(scores.softmax(-1), dropout, training=dropout > 0)
    return (weights @ value).transpose(1, 2), weights


class SaneAttention(nn.Module):
    """Non-causal multi-head self-attention with one fused QKV projection, dispatched through
    transformers' attention interface on `config._attn_implementation` ("sdpa", the default, or
    "eager"; `from_pretrained(..., attn_implementation=...)` or `model.set_attn_implementation`).

    On a CPU in bf16/fp16 (autocast or bf16 weights) "sdpa" runs `eager_attention`: torch's fused
    CPU kernel is slower than the two matmuls at windows of a few hundred tokens (a 1.3x faster
    training step at the benchmark size, scripts/bench_sane.py); in fp32 the fused kernel is faster.
    """

    is_causal = False

    def __init__(self, config: SaneConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, d]; attn_mask None or bool [B, 1, 1, N] (True = key may be attended) -> [B, N, d]."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and q.device.type == "cpu" and q.dtype != torch.float32:
            implementation = "eager"
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        y, _ = attention(self, q, k, v, attn_mask, dropout=self.dropout if self.training else 0.0, is_causal=False)
        return self.out(y.reshape(batch, length, width))


class SaneBlock(nn.Module):
    """GPT-2 style pre-LayerNorm block: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, config: SaneConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = SaneAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.d_model),
            nn.Dropout(config.dropout),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), attn_mask))
        return x + self.mlp(self.ln_mlp(x))


class SaneTransformer(nn.Module):
    """Input projection + positions -> pre-LN blocks -> final LayerNorm -> output projection.

    The encoder maps token_size -> latent_dim, the decoder latent_dim -> token_size.
    """

    def __init__(self, config: SaneConfig, in_features: int, out_features: int):
        super().__init__()
        self.embed = nn.Linear(in_features, config.d_model)
        self.positions = SanePositionEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SaneBlock(config) for _ in range(config.num_layers))
        self.ln_final = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, out_features)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, in_features], positions [B, N, 3] -> [B, N, out_features]."""
        h = self.dropout(self.embed(x) + self.positions(positions))
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.head(self.ln_final(h))


class SaneProjectionHead(nn.Module):
    """[B, window_size * latent_dim] flattened window of latents -> [B, projection_dim].

    Linear -> LN -> ReLU -> Linear -> LN -> ReLU, as published. Flattening keeps which slot of the
    window a latent sits in. Windows shorter than window_size (small models, sequence ends) are
    zero-padded to it, and padded tokens' latents are zero, so padding adds nothing to the first
    Linear; longer sequences get no projection (the contrastive loss works on training windows).
    """

    def __init__(self, config: SaneConfig):
        super().__init__()
        p = config.projection_dim
        self.net = nn.Sequential(
            nn.Linear(config.window_size * config.latent_dim, p),
            nn.LayerNorm(p, eps=config.layer_norm_eps),
            nn.ReLU(),
            nn.Linear(p, p),
            nn.LayerNorm(p, eps=config.layer_norm_eps),
            nn.ReLU(),
        )

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net(flat)


class SanePreTrainedModel(PreTrainedModel):
    config_class = SaneConfig
    config: SaneConfig
    base_model_prefix = "sane"
    main_input_name = "tokens"
    _supports_sdpa = True
    _no_split_modules = ["SaneBlock"]
    # The Hub commit the checkpoint was loaded from (None: a local folder or a new model).
    commit_hash: str | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """PreTrainedModel.from_pretrained, pinned to one commit of a Hub repo, which the model keeps as
        `commit_hash`: files read beside it later (probes, sampling anchors) come from the same
        snapshot (transformers 5 keeps no revision on the model)."""
        from transformers.utils import hub

        if hasattr(hub, "resolve_revision"):  # transformers >= 5.24
            kwargs["revision"] = hub.resolve_revision(
                pretrained_model_name_or_path, kwargs.get("revision"), token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False), cache_dir=kwargs.get("cache_dir"))
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        revision = kwargs.get("revision")
        (loaded[0] if isinstance(loaded, tuple) else loaded).commit_hash = getattr(revision, "resolved", revision)
        return loaded  # (model, loading_info) with output_loading_info=True

    def _init_weights(self, module: nn.Module) -> None:
        """Every parameter and buffer is set here: transformers 5 builds models on the meta device."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SaneModel):
            init.ones_(module.layer_sigma)
        elif isinstance(module, SanePropertyHead):
            init.zeros_(module.feature_mean)
            init.ones_(module.feature_scale)


class SaneModel(SanePreTrainedModel):
    """SANE encoder-decoder with a contrastive projection head.

    Inputs (as produced by the weight tokenizer):
        tokens: [B, N, token_size] float, standardised weight tokens.
        positions: [B, N, 3] integer (n, l, k), each below config.max_positions.
        attention_mask: [B, N], 1/True for real tokens, 0/False for sequence padding; None = all real.
        value_mask: [B, N, token_size] bool, True for real values inside a token (token padding False).
    """

    def __init__(self, config: SaneConfig):
        super().__init__(config)
        self.encoder = SaneTransformer(config, config.token_size, config.latent_dim)
        self.decoder = SaneTransformer(config, config.latent_dim, config.token_size)
        self.projection_head = SaneProjectionHead(config)
        # sigma_l of every layer l for layer-wise loss normalisation; saved with the checkpoint.
        self.register_buffer("layer_sigma", torch.ones(config.max_positions[1]), persistent=True)
        self.post_init()

    # ----------------------------------------------------------------- input checks

    def _check_inputs(
        self, tokens: torch.Tensor | None, positions: torch.Tensor, attention_mask: torch.Tensor | None, width: int, what: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate shapes and ranges; return (positions as long, bool key mask [B, N], or None when
        every token is real: then no masking work is done anywhere)."""
        if tokens.dim() != 3 or tokens.shape[-1] != width:
            raise ValueError(f"{what} must have shape [batch, tokens, {width}], got {tuple(tokens.shape)}.")
        batch, length = tokens.shape[:2]
        if positions.shape != (batch, length, 3):
            raise ValueError(f"positions must have shape [{batch}, {length}, 3] (n, l, k), got {tuple(positions.shape)}.")
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise ValueError(f"positions must be an integer tensor, got dtype {positions.dtype}.")
        positions = positions.long()
        limits = torch.tensor(self.config.max_positions, device=positions.device)
        if bool((positions < 0).any()) or bool((positions >= limits).any()):
            found = positions.reshape(-1, 3).amax(0).tolist()
            raise ValueError(
                f"positions (n, l, k) must lie in [0, max_positions) = [0, {tuple(self.config.max_positions)}); "
                f"found min {positions.reshape(-1, 3).amin(0).tolist()}, max {found}. Use a config with larger "
                "max_positions (or shorter windows)."
            )
        if attention_mask is None:
            return positions, None
        if attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask must have shape [{batch}, {length}], got {tuple(attention_mask.shape)}.")
        mask = attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("attention_mask marks a sequence without any real token; drop empty sequences.")
        return positions, (None if bool(mask.all()) else mask)

    @staticmethod
    def _attention_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
        """[B, N] key mask -> SDPA mask [B, 1, 1, N]; None (nothing padded) lets SDPA use its fast path."""
        return None if mask is None else mask[:, None, None, :]

    # ----------------------------------------------------------------- public API

    def encode(
        self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [B, N, token_size] -> latents [B, N, latent_dim] (zero at padded tokens)."""
        positions, mask = self._check_inputs(tokens, positions, attention_mask, self.config.token_size, "tokens")
        return self._encode(tokens, positions, mask)

    def decode(
        self, latents: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latents [B, N, latent_dim] -> tokens [B, N, token_size] (zero at padded tokens)."""
        positions, mask = self._check_inputs(latents, positions, attention_mask, self.config.latent_dim, "latents")
        return self._decode(latents, positions, mask)

    def embed(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooling: str = "mean",
    ) -> torch.Tensor:
        """One vector per model for probing: the encoder's latents pooled by `pool_latents`."""
        return pool_latents(self.encode(tokens, positions, attention_mask), attention_mask, pooling, positions)

    def project(self, latents: torch.Tensor) -> torch.Tensor | None:
        """latents [B, N, latent_dim] (padded ones zero) -> [B, projection_dim], None if N > window_size."""
        batch, length, _ = latents.shape
        window = self.config.window_size
        if length > window:
            return None
        if length < window:
            latents = F.pad(latents, (0, 0, 0, window - length))
        return self.projection_head(latents.flatten(1))

    def set_layer_sigma(self, sigma) -> None:
        """Set sigma_l for layer-wise loss normalisation from a per-layer std, in token units.

        The trainer passes `ZooData.token_statistics(kind)`: "standardized", the std of each layer's
        training tokens (close to 1 on standardised tokens, so LWLN then barely reweights layers), or
        "raw", the published LWLN (the std of each layer's raw training weights over the layer's
        standardisation scale: the error measured in raw-weight units over the raw spread).
        sigma: sequence or tensor [L] with L <= max_positions[1]; layers beyond L keep sigma 1.
        Values are floored at 1e-4.
        """
        sigma = torch.as_tensor(sigma, dtype=self.layer_sigma.dtype).flatten()
        if sigma.numel() > self.layer_sigma.numel():
            raise ValueError(
                f"Got {sigma.numel()} layer stds but the model has position slots for "
                f"{self.layer_sigma.numel()} layers (max_positions[1])."
            )
        if not bool(torch.isfinite(sigma).all()):
            raise ValueError("layer stds must be finite.")
        with torch.no_grad():
            self.layer_sigma.fill_(1.0)
            self.layer_sigma[: sigma.numel()] = sigma.clamp_min(SIGMA_FLOOR).to(self.layer_sigma.device)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        value_mask: torch.Tensor | None = None,
        num_views: int = 1,
        return_dict: bool | None = None,
    ) -> SaneOutput | tuple:
        """Encode, decode and project a batch of token sequences; with `targets`, also the loss.

        Args:
            tokens: [B, N, token_size]; positions: [B, N, 3]; attention_mask: [B, N] (see class doc).
            targets: [B, N, token_size] tokens to reconstruct (usually the un-augmented tokens).
            value_mask: [B, N, token_size] real values of each token; default all values of real tokens.
            num_views: 1, or 2 when rows i and i + B/2 are two views of the same model; then the loss
                is gamma * NT-Xent(projections of the halves) + (1 - gamma) * reconstruction.

        Returns:
            SaneOutput(loss, latents [B, N, latent], reconstruction [B, N, T], projection [B, proj]).
        """
        positions, mask = self._check_inputs(tokens, positions, attention_mask, self.config.token_size, "tokens")
        batch = tokens.shape[0]
        if num_views not in (1, 2):
            raise ValueError(f"num_views must be 1 or 2, got {num_views}.")
        if num_views == 2 and batch % 2:
            raise ValueError(f"num_views=2 needs an even batch (two halves of views), got batch {batch}.")
        latents = self._encode(tokens, positions, mask)
        reconstruction = self._decode(latents, positions, mask)
        projection = self.project(latents)

        loss = rec_loss = con_loss = None
        if targets is not None:
            if targets.shape != tokens.shape:
                raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, got {tuple(targets.shape)}.")
            loss_mask = self._value_mask(value_mask, mask, tokens)
            sigma = self.layer_sigma[positions[..., 1]] if self.config.layer_loss_norm else None
            # Losses in fp32 even under autocast: bf16 squared errors and cosine logits lose digits.
            rec_loss = masked_reconstruction_mse(reconstruction.float(), targets.float(), loss_mask, sigma)
            loss = rec_loss
            if num_views == 2:
                if projection is None:
                    raise ValueError(
                        f"The contrastive loss needs windows of at most window_size={self.config.window_size} "
                        f"tokens, got {tokens.shape[1]}."
                    )
                half = batch // 2
                projection32 = projection.float()
                con_loss = nt_xent(projection32[:half], projection32[half:], self.config.contrastive_temperature)
                loss = sane_loss(con_loss, rec_loss, self.config.gamma)

        output = SaneOutput(
            loss=loss,
            latents=latents,
            reconstruction=reconstruction,
            projection=projection,
            reconstruction_loss=rec_loss,
            contrastive_loss=con_loss,
        )
        use_dict = self.config.return_dict if return_dict is None else return_dict
        return output if use_dict else output.to_tuple()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained, but a checkpoint whose keys do not match the model is an
        error (transformers only warns and leaves random weights). Pass `strict=False` to allow it."""
        strict = kwargs.pop("strict", True)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
        if model.config.properties:  # the backbone of a fine-tuned SaneForPropertyPrediction: its head stays behind
            unexpected = [k for k in unexpected if not k.startswith("head.")]
        if strict and (missing or unexpected):
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise ValueError(
                f"The checkpoint {source!s} does not match SaneModel({model.config.model_type}, "
                f"d_model={model.config.d_model}, num_layers={model.config.num_layers}): "
                f"missing keys (expected by the model, not found in the checkpoint): {missing or 'none'}; "
                f"unexpected keys (found in the checkpoint, not expected): {unexpected or 'none'}. "
                "Is config.json from the same training run as the weights? Pass strict=False to load anyway."
            )
        return (model, info) if want_info else model

    # ----------------------------------------------------------------- internals

    def _encode(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        latents = self.encoder(tokens, positions, self._attention_bias(mask))
        return latents if mask is None else latents * mask.unsqueeze(-1).to(latents.dtype)

    def _decode(self, latents: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = self.decoder(latents, positions, self._attention_bias(mask))
        return tokens if mask is None else tokens * mask.unsqueeze(-1).to(tokens.dtype)

    def _value_mask(self, value_mask: torch.Tensor | None, mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
        """[B, N, T] bool: real values of real tokens; None when all values are real."""
        if value_mask is None:
            return None if mask is None else mask.unsqueeze(-1).expand_as(tokens)
        if value_mask.shape != tokens.shape:
            raise ValueError(
                f"value_mask must have the shape of tokens {tuple(tokens.shape)}, got {tuple(value_mask.shape)}."
            )
        value_mask = value_mask.bool()
        return value_mask if mask is None else value_mask & mask.unsqueeze(-1)


# ------------------------------------------------------------------------------ property head


@dataclass
class SanePropertyPredictionOutput(ModelOutput):
    """Output of `SaneForPropertyPrediction.forward`.

    Attributes:
        loss: 0-d mean over the properties of their losses, only with `labels`.
        logits: [B, num_outputs] the head's outputs: one standardised value per regression property,
            one logit per label of each classification property, in `config.properties` order.
        embedding: [B, d] what the head read: the pooled latents (and s(W), with head_statistics).
        property_losses: [num_properties] each property's loss (MSE of the standardised target or
            cross-entropy), with `labels`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    property_losses: torch.Tensor | None = None


# SaneConfig fields of the property head, accepted by SaneForPropertyPrediction.from_pretrained.
HEAD_OPTIONS = ("properties", "head_pooling", "head_layers", "head_hidden_dim", "head_dropout", "freeze_encoder",
                "head_statistics")


class SanePropertyHead(nn.Module):
    """Pooled latents [B, d] -> [B, num_outputs]. The latents are first standardised with a stored
    per-feature mean and scale (`feature_mean`, `feature_scale` [d]; the fine-tuner sets them from
    the pretrained encoder's training embeddings, as the linear probes standardise their features,
    so the head's learning rate does not depend on the latents' arbitrary scale); then dropout ->
    Linear, or with head_hidden_dim h dropout -> Linear(d, h) -> LayerNorm -> GELU -> dropout ->
    Linear(h, num_outputs)."""

    def __init__(self, config: SaneConfig, in_features: int, num_outputs: int):
        super().__init__()
        h, p = config.head_hidden_dim, config.head_dropout
        self.register_buffer("feature_mean", torch.zeros(in_features), persistent=True)
        self.register_buffer("feature_scale", torch.ones(in_features), persistent=True)
        layers = [nn.Dropout(p)]
        if h:
            layers += [nn.Linear(in_features, h), nn.LayerNorm(h, eps=config.layer_norm_eps), nn.GELU(), nn.Dropout(p)]
        self.net = nn.Sequential(*layers, nn.Linear(h or in_features, num_outputs))

    def set_feature_standardization(self, embeddings: torch.Tensor) -> None:
        """Per-feature mean and std of embeddings [n, d] (a constant feature keeps scale 1)."""
        embeddings = torch.as_tensor(embeddings, dtype=torch.float64)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.feature_mean.numel() or len(embeddings) < 2:
            raise ValueError(f"expected at least 2 embeddings of {self.feature_mean.numel()} features, got shape "
                             f"{list(embeddings.shape)}")
        scale = embeddings.std(0, unbiased=False)
        with torch.no_grad():
            self.feature_mean.copy_(embeddings.mean(0))
            self.feature_scale.copy_(torch.where(scale > 1e-12, scale, torch.ones_like(scale)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # standardised in float32: in bf16 a feature's spread can be below its rounding step
        return self.net((pooled.float() - self.feature_mean.float()) / self.feature_scale.float())


class SaneForPropertyPrediction(SanePreTrainedModel):
    """A pretrained SANE encoder and a head predicting a model's properties (test accuracy, epoch,
    hyperparameters) from the pooled latents of its weight tokens, fine-tuned end to end (or the
    head alone, `config.freeze_encoder`): the `AutoModelForSequenceClassification` pattern for
    weight space.

        model = SaneForPropertyPrediction.from_pretrained(SANE_CHECKPOINT, properties=[
            {"name": "test_acc", "kind": "regression", "mean": 0.9, "std": 0.05},
            {"name": "activation", "kind": "classification", "labels": ["relu", "tanh"]}])

    The head reads "mean" or "layer" pooling (`config.head_pooling`), both unchanged by neuron
    permutations. Regression targets are learned standardised with the stored mean / std and
    predicted in their own units (`predictions`). Sequences longer than `window_size` are encoded
    in sliding windows with a halo of window_size // 4, gradients included.
    Inputs as `SaneModel` (tokens [B, N, T], positions [B, N, 3], attention_mask [B, N]).
    """

    def __init__(self, config: SaneConfig):
        super().__init__(config)
        if not config.properties:
            raise ValueError("SaneForPropertyPrediction needs config.properties, the properties to predict: e.g. "
                             "SaneForPropertyPrediction.from_pretrained(SANE_CHECKPOINT, properties=['test_acc'])")
        self.sane = SaneModel(config)
        width = config.latent_dim * (config.head_layers if config.head_pooling == "layer" else 1) + config.head_statistics
        self.head = SanePropertyHead(config, width, sum(self.output_sizes))
        self.post_init()
        self.freeze()

    def freeze(self) -> None:
        """No gradients for the decoder and projection head (they come with the checkpoint, so AutoModel
        still loads the backbone from a fine-tuned folder, but take no part in property prediction)
        nor, with `config.freeze_encoder`, for the encoder. Loading replaces parameters, so
        from_pretrained calls it again."""
        self.sane.decoder.requires_grad_(False)
        self.sane.projection_head.requires_grad_(False)
        self.sane.encoder.requires_grad_(not self.config.freeze_encoder)

    @property
    def property_names(self) -> list[str]:
        return [p["name"] for p in self.config.properties]

    @property
    def output_sizes(self) -> list[int]:
        """Head outputs per property: 1 for a regression, one per label for a classification."""
        return [len(p["labels"]) if p["kind"] == "classification" else 1 for p in self.config.properties]

    def pool(self, latents: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        """Token latents [B, N, L] -> [B, L] ("mean") or [B, head_layers * L] ("layer")."""
        pooled = pool_latents(latents, attention_mask, self.config.head_pooling, positions)
        if self.config.head_pooling == "mean":
            return pooled
        layers = self.config.head_layers
        if pooled.shape[1] > layers * self.config.latent_dim:
            raise ValueError(f"the model has {pooled.shape[1] // self.config.latent_dim} layers but the head reads "
                             f"{layers} (head_layers); fine-tune a head for this architecture")
        return F.pad(pooled, (0, layers * self.config.latent_dim - pooled.shape[1]))

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, N, T] -> latents [B, N, latent_dim]; in sliding windows when N > window_size."""
        window = self.config.window_size
        batch, length = tokens.shape[:2]
        if length <= window:
            return self.sane.encode(tokens, positions, attention_mask)
        mask = torch.ones(batch, length, dtype=torch.long, device=tokens.device) if attention_mask is None else attention_mask
        out = tokens.new_zeros(batch, length, self.config.latent_dim)
        for w in sliding_windows(length, window, window // 4):  # as downstream.embedding encodes, with gradients
            rows = mask[:, w.slice].bool().any(1)
            if bool(rows.any()):
                latents = self.sane.encode(tokens[rows, w.slice], positions[rows, w.slice], mask[rows, w.slice])
                out[rows, w.keep_start:w.keep_stop] = latents[:, w.keep].to(out.dtype)
        return out

    def features(self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 statistics: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads [B, d]: the pooled latents, with `config.head_statistics` the s(W)
        statistics [B, head_statistics] of the raw weights after them."""
        if self.config.freeze_encoder:
            with torch.no_grad():
                latents = self.encode(tokens, positions, attention_mask)
        else:
            latents = self.encode(tokens, positions, attention_mask)
        pooled = self.pool(latents, attention_mask, positions)
        wanted = self.config.head_statistics
        if not wanted:
            return pooled
        if statistics is None or tuple(statistics.shape) != (pooled.shape[0], wanted):
            got = None if statistics is None else tuple(statistics.shape)
            raise ValueError(f"this head reads {wanted} s(W) statistics of each model's raw weights beside its latents: "
                             f"pass statistics [{pooled.shape[0]}, {wanted}] = weightspace.weight_statistics(flat, layout)[0] "
                             f"(got {got})")
        return torch.cat([pooled.float(), statistics.to(pooled.device, torch.float32)], dim=1)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, label_mask: torch.Tensor | None = None,
                statistics: torch.Tensor | None = None, return_dict: bool | None = None) -> SanePropertyPredictionOutput | tuple:
        """Predict the properties of a batch of models; with `labels`, also the loss.

        Args:
            tokens, positions, attention_mask: as `SaneModel.forward`.
            statistics: [B, head_statistics] s(W) of the raw weights, for a head that reads them.
            labels: [B, num_properties] float, per property the raw target (regression) or the index
                of its label in `config.properties` (classification); `encode_labels` makes them.
            label_mask: [B, num_properties] bool, False where a target is missing; default all True.
        """
        embedding = self.features(tokens, positions, attention_mask, statistics)
        logits = self.head(embedding)
        loss = losses = None
        if labels is not None:
            losses = self._losses(logits.float(), labels, label_mask)
            loss = losses.mean()
        output = SanePropertyPredictionOutput(loss=loss, logits=logits, embedding=embedding, property_losses=losses)
        use_dict = self.config.return_dict if return_dict is None else return_dict
        return output if use_dict else output.to_tuple()

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor | None) -> torch.Tensor:
        count = len(self.config.properties)
        if labels.shape != (logits.shape[0], count):
            raise ValueError(f"labels must have shape [{logits.shape[0]}, {count}] (one column per property "
                             f"{self.property_names}), got {tuple(labels.shape)}")
        labels = labels.to(logits.device, torch.float32)
        mask = torch.ones_like(labels, dtype=torch.bool) if label_mask is None else label_mask.to(logits.device).bool()
        out, start = [], 0
        for j, (spec, size) in enumerate(zip(self.config.properties, self.output_sizes)):
            keep = mask[:, j]
            part = logits[keep, start:start + size]
            if not bool(keep.any()):
                out.append(logits.sum() * 0.0)  # no target in this batch: no gradient, no NaN
            elif spec["kind"] == "regression":
                target = (labels[keep, j] - spec["mean"]) / spec["std"]
                out.append(F.mse_loss(part[:, 0], target))
            else:
                out.append(F.cross_entropy(part, labels[keep, j].long()))
            start += size
        return torch.stack(out)

    def encode_labels(self, targets: dict, num_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """{property: values} (zoo columns) -> (labels [n, num_properties] float, label_mask [n, P] bool).
        Missing values (None / NaN) are masked; a classification value the head has no label for is
        a ValueError naming the property, the value and the labels."""
        missing = [n for n in self.property_names if n not in targets]
        if missing:
            raise ValueError(f"no targets for the head's properties {missing}; got {sorted(targets)}")
        n = len(next(iter(targets.values()))) if num_rows is None else num_rows
        labels, mask = torch.zeros(n, len(self.property_names)), torch.zeros(n, len(self.property_names), dtype=torch.bool)
        for j, spec in enumerate(self.config.properties):
            values = list(targets[spec["name"]])
            for i, v in enumerate(values):
                if v is None or (isinstance(v, float) and v != v):
                    continue
                if spec["kind"] == "classification":
                    index = {str(c): k for k, c in enumerate(spec["labels"])}
                    if str(v) not in index:
                        raise ValueError(f"property {spec['name']!r}: label {v!r} is none of the labels the head was "
                                         f"fine-tuned on {spec['labels']}; fine-tune on a zoo whose train split has it")
                    labels[i, j] = index[str(v)]
                else:
                    labels[i, j] = float(v)
                mask[i, j] = True
        return labels, mask

    def predictions(self, logits: torch.Tensor) -> dict[str, list]:
        """Head outputs [B, num_outputs] -> {property: B values}: regressions in the targets' units,
        classifications the label of the largest logit."""
        logits = logits.detach().float().cpu()
        out, start = {}, 0
        for spec, size in zip(self.config.properties, self.output_sizes):
            part = logits[:, start:start + size]
            if spec["kind"] == "regression":
                out[spec["name"]] = (part[:, 0] * spec["std"] + spec["mean"]).tolist()
            else:
                out[spec["name"]] = [spec["labels"][k] for k in part.argmax(1).tolist()]
            start += size
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a fine-tuned checkpoint, or build the head over a pretrained SANE checkpoint:
        `from_pretrained(SANE, properties=[...], head_pooling=..., freeze_encoder=...)` (the head is
        new; every SANE weight must be in the checkpoint). Weights of another size than the config
        (a head over a SANE of another size) are an error naming the tensors and their shapes."""
        want_info = kwargs.pop("output_loading_info", False)
        head = {k: kwargs.pop(k) for k in HEAD_OPTIONS if k in kwargs}
        if head:  # a new head: the checkpoint's config with the head's options, validated by SaneConfig
            if "config" in kwargs:
                raise ValueError(f"pass the head options {sorted(head)} in the config or as arguments, not both")
            loaded = SaneConfig.from_pretrained(pretrained_model_name_or_path, **{
                k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs})
            kwargs["config"] = SaneConfig.from_dict({**loaded.to_dict(), **head})
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **kwargs)
        mismatched = sorted(info.get("mismatched_keys", ()), key=str)
        if mismatched:
            shown = "; ".join(f"{m[0]}: {tuple(m[1])} in the checkpoint, {tuple(m[2])} in the model"
                              if len(m) == 3 else str(m) for m in mismatched)
            c = model.config
            raise ValueError(f"the weights of {pretrained_model_name_or_path!s} do not fit a SaneForPropertyPrediction "
                             f"of d_model={c.d_model}, latent_dim={c.latent_dim}, num_layers={c.num_layers}, token_size="
                             f"{c.token_size} with {sum(model.output_sizes)} head outputs: {shown}. Load a head onto the "
                             "SANE it was fine-tuned from (same sizes) or fine-tune a new one")
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("head."))
        if missing:
            raise ValueError(f"{pretrained_model_name_or_path!s} lacks SANE weights the model needs: {missing[:6]}; "
                             "is it a SANE checkpoint (config.json and model.safetensors of one run)?")
        model.freeze()
        return (model, info) if want_info else model


# save_pretrained copies this file and its relative imports next to the weights and writes
# `auto_map`, so checkpoints load with trust_remote_code=True where hyperrep_hf is not installed.
SaneModel.register_for_auto_class("AutoModel")
# transformers' own check knows only its Auto classes; this library's is named directly.
SaneForPropertyPrediction._auto_class = "AutoModelForWeightPropertyPrediction"


class AutoModelForWeightPropertyPrediction(_BaseAutoModelClass):
    """The Auto class of property heads over weight-space backbones, like
    `AutoModelForSequenceClassification`: `AutoModelForWeightPropertyPrediction.from_pretrained(FOLDER)`
    loads a fine-tuned `SaneForPropertyPrediction` (and, with `properties=[...]`, builds one over a
    pretrained SANE checkpoint)."""

    _model_mapping = _LazyAutoMapping({}, type("NoBuiltinModels", (dict,), {})())  # only what register() adds


AutoModelForWeightPropertyPrediction.register(SaneConfig, SaneForPropertyPrediction, exist_ok=True)

__all__ = ["POOLINGS", "AutoModelForWeightPropertyPrediction", "SaneForPropertyPrediction", "SaneModel", "SaneOutput", "SanePreTrainedModel",
           "SanePropertyPredictionOutput", "pool_latents"]
