"""`BackboneAdapter`: everything dpvr needs to know about one family of multimodal models.

The routing engine, the trainer, the evaluator, the analysis and the benchmarks never read a
model's internals themselves: they ask its adapter (found by ``config.model_type`` in
`dpvr.backbones.adapter_for`). The base class implements the common case — a
``...ForConditionalGeneration`` whose ``model.language_model`` is a decoder stack with 1-D RoPE
(LLaVA and its descendants); a family overrides only what differs (M-RoPE positions, deepstack,
where its language model lives, ...).

Nothing here copies or patches a module: an adapter holds references to the wrapped model's own
embedding, decoder layers, rotary embedding, final norm and LM head, and calls them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


class UnsupportedModelError(TypeError, ValueError):
    """The model is not of a family dpvr has an adapter for."""


@dataclass
class LMInputs:
    """What the family's own multimodal forward hands its language model, captured before the first layer."""

    inputs_embeds: torch.Tensor  # (B, q, d): token embeddings with image/video features merged in
    position_ids: torch.Tensor | None  # family layout: (B|1, q), or (3|4, B, q) for M-RoPE
    extras: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. Qwen3-VL's deepstack features)


@dataclass
class Positions:
    """Positions of one forward pass, as the family's text model derives them from ``position_ids``."""

    rope: torch.Tensor  # what the rotary embedding takes: (B|1, q) or (3, B, q)
    layer: torch.Tensor | None  # what decoder layers (and FA2) receive: (B|1, q) or None
    mask: torch.Tensor | None  # what the mask helpers receive (packed-sequence detection): (B|1, q) or None


def project_q(attn: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """(B, L, d) attention input -> (B, H, L, hd) queries before RoPE (per-head norms applied, as Qwen3 does)."""
    b, length, _ = normed.shape
    q = attn.q_proj(normed)
    q = q.view(b, length, q.shape[-1] // attn.head_dim, attn.head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    return q.transpose(1, 2)


def project_kv(attn: nn.Module, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, d) attention input -> keys, values (B, H_kv, L, hd), keys before RoPE (per-head norm applied)."""
    b, length, _ = normed.shape
    k = attn.k_proj(normed)
    shape = (b, length, k.shape[-1] // attn.head_dim, attn.head_dim)  # explicit: L may be 0 (no image in the batch)
    k = k.view(shape)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    v = attn.v_proj(normed).view(shape)
    return k.transpose(1, 2), v.transpose(1, 2)


class _Captured(Exception):
    """Raised by the language-model pre-hook to stop the family's forward once its LM inputs are known."""


class BackboneAdapter:
    """The adapter of one family, bound to one loaded model.

    Class attributes say what a family is; methods do what the engine needs. Subclasses register
    themselves with `dpvr.backbones.register`.
    """

    #: ``config.model_type`` values this adapter serves (the registry key, as peft keys its defaults).
    model_types: ClassVar[tuple[str, ...]] = ()
    #: human-readable family name for messages and tables.
    family: ClassVar[str] = ""
    #: attribute of ``model.model`` that holds the decoder stack.
    language_model_attr: ClassVar[str] = "language_model"
    #: config attributes naming the token ids of visual placeholders, by kind.
    visual_token_attrs: ClassVar[dict[str, str]] = {"image": "image_token_id"}
    #: LoRA targets inside each decoder layer (peft regex is built from them and the LM's path).
    #: dotted path (inside ``model.model``) of the vision-to-text projector, trained by ``--method full``.
    projector_path: ClassVar[str | None] = "multi_modal_projector"
    lora_projections: ClassVar[tuple[str, ...]] = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )

    def __init__(self, model: nn.Module, route: str = "all"):
        self.model = model
        self.config = model.config
        inner = getattr(model, "model", None)
        lm = getattr(inner, self.language_model_attr, None)
        missing = [
            name for name, ok in [
                (f"model.{self.language_model_attr}", lm is not None),
                (f"model.{self.language_model_attr}.layers", lm is not None and hasattr(lm, "layers")),
                (f"model.{self.language_model_attr}.rotary_emb", lm is not None and hasattr(lm, "rotary_emb")),
                ("lm_head", hasattr(model, "lm_head")),
            ] if not ok
        ]
        if missing:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({self.config.model_type}) lacks {', '.join(missing)}, which the "
                f"{self.family or type(self).__name__} adapter expects; load it with its transformers "
                "*ForConditionalGeneration class"
            )
        self.inner = inner
        self.language_model = lm
        self.layers: nn.ModuleList = lm.layers
        self.rotary_emb: nn.Module = lm.rotary_emb
        self.norm: nn.Module = lm.norm
        self.lm_head: nn.Module = model.lm_head
        self.text_config = self.config.get_text_config()
        self.visual_token_ids = self._visual_token_ids(route)

    # ------------------------------------------------------------------ identity
    def _visual_token_ids(self, route: str) -> dict[str, int]:
        ids = {}
        for kind, attr in self.visual_token_attrs.items():
            value = getattr(self.config, attr, None)
            if value is not None:
                ids[kind] = int(value)
        if route == "all":
            return ids
        if route not in ids:
            raise ValueError(f"route={route!r}: this {self.family} model has visual tokens of kinds "
                             f"{sorted(ids)}; use one of them or 'all'")
        return {route: ids[route]}

    @property
    def image_token_id(self) -> int:
        """The image placeholder id (the first visual kind): generation suppresses it."""
        return next(iter(self.visual_token_ids.values()))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the positions routed as visual tokens (image and/or video placeholders)."""
        ids = torch.tensor(list(self.visual_token_ids.values()), device=input_ids.device)
        return torch.isin(input_ids, ids)

    def all_visual_ids(self) -> list[int]:
        """Every visual placeholder id of the family, routed or not (generation must never emit them)."""
        return self.visual_ids_of(self.config)

    @classmethod
    def visual_ids_of(cls, config) -> list[int]:
        """Every visual placeholder id named by ``config`` (no model needed: works for a peft-wrapped one too)."""
        return [int(getattr(config, a)) for a in cls.visual_token_attrs.values() if getattr(config, a, None) is not None]

    def min_split(self) -> int:
        """The first layer a split may start at (families that inject visual features into early layers raise it)."""
        return 1

    # ------------------------------------------------------------------ embedding
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def lm_inputs(self, input_ids, attention_mask, position_ids, cache, **mm_inputs) -> LMInputs:
        """Run the family's own multimodal forward up to its language model and return what it would receive.

        The family's code merges image/video features at the placeholder positions and computes its
        positions (e.g. Qwen2-VL's ``get_rope_index``, storing ``rope_deltas`` as it does); a forward
        pre-hook on the language model captures its inputs and stops the pass before the first layer.
        """
        box: dict[str, Any] = {}

        def capture(module, args, kwargs):
            box.update(kwargs)
            raise _Captured

        handle = self.language_model.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=False, **mm_inputs)
        except _Captured:
            pass
        finally:
            handle.remove()
        if "inputs_embeds" not in box:  # pragma: no cover - a family whose forward skips its LM
            raise RuntimeError(f"{type(self.inner).__name__}.forward did not call its language model")
        extras = {k: v for k, v in box.items() if k not in {
            "input_ids", "inputs_embeds", "position_ids", "attention_mask", "cache", "use_cache"} and v is not None}
        return LMInputs(box["inputs_embeds"], box.get("position_ids"), extras)

    # ------------------------------------------------------------------ positions
    def positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None, cache) -> Positions:
        """1-D RoPE (Llama/Mistral/Qwen2 text models): default positions continue from the cache."""
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
        return Positions(rope=position_ids, layer=position_ids, mask=position_ids)

    def rotary(self, hidden: torch.Tensor, positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (B|1, q, head_dim)."""
        return self.rotary_emb(hidden, positions.rope)

    # ------------------------------------------------------------------ masks
    def attention_masks(self, layers, *, inputs_embeds, attention_mask, cache, position_ids, extras=None):
        """The attention mask of ``layers`` (backbone layer indices) over a contiguous view (the prompt, a prefix of
        it, or new tokens after the cache). Default: one causal mask, sized for ``layers[0]``'s cache.

        Whatever this returns reaches `call_layer` unchanged, so a family whose layers differ in mask type
        (sliding window, bidirectional spans) may return one mask per type and pick it there.
        """
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(
            config=self.text_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
            position_ids=position_ids, layer_idx=layers[0] if layers and cache is not None else None,
        )

    def view_masks(self, layers, *, query_positions, key_positions, key_valid, dtype, extras, default):
        """The attention mask of ``layers`` over a view with holes (text view, FastV's kept view, text queries
        over full keys, and their decode steps), given each query's and key's position in the full view
        (B, q) / (B, K), and which keys are real (B, K). ``default()`` builds the engine's plain causal mask
        (causal in view order), which is exact for families whose layers are all plain causal.
        """
        return default()

    # ------------------------------------------------------------------ layers
    def call_layer(self, layer: nn.Module, hidden, mask, position_ids, cache, use_cache, position_embeddings):
        """The one place that knows a decoder layer's call signature (transformers 5.24)."""
        return layer(hidden, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache,
                     position_embeddings=position_embeddings)

    def after_layer(self, layer_idx: int, hidden: torch.Tensor, extras: dict, visual: torch.Tensor) -> torch.Tensor:
        """What the family's text model does to the hidden states after layer ``layer_idx`` (default: nothing)."""
        return hidden

    def apply_rotary(self, attn: nn.Module):
        """The family's ``apply_rotary_pos_emb`` (from the attention module's own source module)."""
        return sys.modules[type(attn).__module__].apply_rotary_pos_emb

    # ------------------------------------------------------------------ training
    def language_model_prefix(self) -> str:
        """Dotted path of the decoder stack inside the top-level model (for module-name regexes)."""
        for name, module in self.model.named_modules():
            if module is self.language_model:
                return name
        raise RuntimeError("language model not found among the model's modules")  # pragma: no cover

    def lora_target_modules(self) -> str:
        """peft ``target_modules`` regex: the projections of the LM's decoder layers (never the vision tower)."""
        prefix = self.language_model_prefix().replace(".", r"\.")
        alts = "|".join(p.replace(".", r"\.") for p in self.lora_projections)
        return rf"{prefix}\.layers\.\d+\.({alts})"

    def full_finetune_modules(self) -> list[nn.Module]:
        """What ``--method full`` trains: the language model, its head and the projector (the vision tower stays frozen)."""
        modules = [self.language_model, self.lm_head]
        projector = self.inner
        for part in self.projector_path.split(".") if self.projector_path else ():
            projector = getattr(projector, part, None)
        if self.projector_path and projector is not None:
            modules.append(projector)
        return modules

    # ------------------------------------------------------------------ generation
    def suppress_tokens(self) -> list[int]:
        return self.all_visual_ids()

    # ------------------------------------------------------------------ prompt layout (no weights needed)
    #: a visual input's tokens attend to each other in both directions (Gemma 3's images).
    bidirectional_visual: ClassVar[bool] = False

    @classmethod
    def visual_kinds(cls) -> tuple[str, ...]:
        """The kinds of visual input the family takes ("image", and "video" where it has a video token)."""
        return tuple(cls.visual_token_attrs)

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """The token runs one visual input (``visual.kind``, ``.height``, ``.width``, ``.frames``) expands into,
        as ``[(kind, count), ...]`` with marker text tokens as ``("text", n)``, and the units its vision tower
        encodes (crops, tiles, temporal groups), by the rule of the family's processor; ``processor`` holds a
        shape's processor settings by kind (``{"image": {"max_pixels": ...}}``).

        The one home of these counts: the FLOPs model (:mod:`dpvr.shapes.layout`) and the benchmark prompts
        (:mod:`dpvr.efficiency.inputs`) both read them from here. Default (LLaVA-1.5): the tower's fixed grid,
        whatever the image size, plus the CLS token under the ``full`` feature strategy.
        """
        vc = config.vision_config
        n = (vc.image_size // vc.patch_size) ** 2 + (1 if config.vision_feature_select_strategy == "full" else 0)
        return [("image", n)], 1
