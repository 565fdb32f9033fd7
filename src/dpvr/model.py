"""`DPVRModel`: a stock multimodal model (any family in `dpvr.backbones`) wrapped with DPVR routing, with HF-style forward and generate.

    model = get_dpvr_model(base, DPVRConfig(variant="lf", split=18))
    out = model(input_ids=..., pixel_values=..., attention_mask=..., labels=...)   # .loss, .logits
    ids = model.generate(**inputs, max_new_tokens=32)                             # KV-cached decode
    model.save_pretrained("adapter/")                                              # side branch only
    model = DPVRModel.from_pretrained(base, "adapter/")

Inference-time peers are configurations of the same wrapper (SPEC §6, see `dpvr.config`):

    get_dpvr_model(base, DPVRConfig(variant="fastv", fastv_k=2, fastv_ratio=0.5))      # FastV
    get_dpvr_model(base, DPVRConfig(variant="vtw", split=16))                          # VTW at k=16
    get_dpvr_model(base, DPVRConfig(variant="lf", split=18, fastv_k=2, fastv_ratio=0.5))  # LF + FastV

The wrapped model is kept as ``model.base`` and frozen; the only trainable parameters are the
side branch's (``model.side_branch``; FastV and VTW have none). ``vanilla`` (or a split that routes nothing) calls the
base model itself, so its outputs are the unwrapped model's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from dpvr.config import DPVRConfig
from dpvr.engine.backbone import backbone_of
from dpvr.engine.cache import DPVRCache, RoutedCache
from dpvr.engine.router import check_attention, routed_decoder_forward
from dpvr.engine.static_cache import DPVRStaticCache, decode_step
from dpvr.engine.side_branch import SideBranch


class DPVRModel(PreTrainedModel, GenerationMixin):
    """A multimodal model whose deep layers route visual tokens as its `DPVRConfig` says.

    Any family with a backbone adapter (`dpvr.backbones`) can be wrapped; the family's own forward
    embeds images and videos and computes positions, the adapter tells the engine how its layers run.
    """

    base_model_prefix = "base"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, base: nn.Module, dpvr_config: DPVRConfig):
        # PreTrainedModel.__init__ only records the config; no weights are (re)initialised here.
        super().__init__(base.config)
        self.base = base
        self.dpvr_config = dpvr_config
        self.backbone = backbone_of(base, route=dpvr_config.route)
        self.plan = dpvr_config.resolve(self.backbone.num_layers, min_split=self.backbone.min_split(),
                                        family=self.backbone.family)
        if self.plan.routed:
            check_attention(self.plan, self.text_config)
        self.generation_config = base.generation_config
        self.side_branch = None
        if self.plan.side_depth > 0:
            self.side_branch = SideBranch.from_backbone(
                self.backbone.layers, self.plan.split, self.plan.side_depth, dpvr_config.side_init,
                init_fn=getattr(base, "_init_weights", None),
            )
        for p in base.parameters():
            p.requires_grad_(False)

    # The wrapper owns no embeddings of its own: delegate so HF utilities find the base's.
    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    @property
    def text_config(self):
        return self.backbone.text_config

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        prompt_len: int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """HF-style forward. Family inputs (``pixel_values``, ``image_sizes``, ``pixel_values_videos``,
        ``image_grid_thw``, ``video_grid_thw``, ``mm_token_type_ids``, ...) pass through ``kwargs`` to the
        family's own embedding code. ``prompt_len`` (FastV only): where the prompt ends in ``input_ids``;
        FastV ranks image tokens by the attention of the prompt's last token, so a no-cache recompute over
        prompt + generated tokens keeps the same tokens as the cached prefill did (``generate`` passes
        it). Default: the whole input is the prompt."""
        if "past_key_values" in kwargs:  # older callers
            cache = kwargs.pop("past_key_values")
        if isinstance(cache, DPVRStaticCache):
            if cache.prefilled:
                return self._static_decode(input_ids, attention_mask, position_ids, cache, logits_to_keep, kwargs)
            cache.prompt_attention_mask = attention_mask
        compiled = getattr(self, "_prefill_fn", None)
        if cache is not None and cache.get_seq_length() > 0:
            compiled = None  # a decode step: compile_prefill leaves it eager
        graphs = compiled is not None and getattr(self, "_prefill_graphs", False) and (
            input_ids is not None and input_ids.is_cuda)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = (compiled or self._forward)(input_ids, attention_mask, position_ids, cache, inputs_embeds, labels,
                                          use_cache, logits_to_keep, prompt_len, **kwargs)
        if graphs:
            out.logits = out.logits.clone()  # a CUDA-graph output is overwritten by the next replay
        return out

    def _forward(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, labels, use_cache,
                 logits_to_keep, prompt_len, **kwargs) -> CausalLMOutputWithPast:
        if not self.plan.routed:
            return self.base(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if input_ids is None:
            raise ValueError("a routed DPVR model needs input_ids (visual and text positions are read from them)")
        if inputs_embeds is not None:
            raise ValueError("pass input_ids (and pixel_values), not inputs_embeds, to a routed DPVR model")
        if use_cache is None:
            use_cache = bool(getattr(self.text_config, "use_cache", True)) and not self.training
        if use_cache and cache is None:
            cache = DPVRCache(config=self.text_config)
        if cache is not None and not isinstance(cache, RoutedCache):
            raise TypeError(
                f"a routed DPVR model keeps per-layer cache lengths in a DPVRCache, got {type(cache).__name__}; "
                "pass cache=None (one is created) or dpvr.DPVRCache(config=model.text_config)"
            )
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        lm = self.backbone.lm_inputs(input_ids, attention_mask, position_ids, cache, **kwargs)
        hidden = routed_decoder_forward(
            self.backbone, self.plan, self.side_branch, input_ids, lm.inputs_embeds, attention_mask, lm.position_ids,
            cache, use_cache, prompt_len=prompt_len, extras=lm.extras,
        )  # (B, q, d)
        hidden = self.backbone.norm(slice_logits_to_keep(hidden, logits_to_keep))
        logits = self.backbone.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.base.loss_function(
                logits=logits, labels=labels, vocab_size=self.text_config.vocab_size, **loss_kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    # ------------------------------------------------------------------ fixed-shape decode
    def compile_decode(self, mode: str | None = None, backend: str = "inductor", **options) -> "DPVRModel":
        """``torch.compile`` the decode step used with a `DPVRStaticCache` (``generate(..., dpvr_static_cache=True)``).

        ``mode="reduce-overhead"`` on a GPU replays each step as a CUDA graph (``backend="cudagraphs"``: CUDA
        graphs of the eager kernels, without inductor's code generation, so it compiles in seconds). Shapes are fixed
        (``dynamic=False``): one compilation per batch size. ``compile_decode(backend=None)`` undoes it.
        """
        self._decode_fn, self._decode_graphs = _compiled(decode_step, mode, backend, options)
        return self

    def compile_prefill(self, mode: str | None = None, backend: str = "inductor", **options) -> "DPVRModel":
        """``torch.compile`` every forward call whose cache is empty: the prefill (and no-cache forwards).

        The routed pass reads the prompt's layout from the device before its first layer (where the
        images are, whether anything is padded), so the compiled prefill is a few graphs: those reads
        break it, and the whole decoder stack after them is one graph — what ``mode="reduce-overhead"``
        replays as one CUDA graph on a GPU, where an eager batch-1 prefill is bound by kernel launches.
        Shapes are fixed (``dynamic=False``): one compilation per prompt shape. Decode steps stay as they
        were (``compile_decode`` compiles those). Under CUDA graphs the prompt's cache lives in the graph's
        memory and is overwritten by the next prefill: decode it before prefilling another prompt, as
        ``generate`` does. ``compile_prefill(backend=None)`` undoes it.
        """
        self._prefill_fn, self._prefill_graphs = _compiled(self._forward, mode, backend, options)
        return self

    def _static_decode(self, input_ids, attention_mask, position_ids, cache: DPVRStaticCache, logits_to_keep, kwargs):
        if input_ids is None:
            raise ValueError("decoding with a DPVRStaticCache needs input_ids")
        if bool(self.backbone.visual_mask(input_ids).any()):
            raise ValueError(
                "image tokens after the prompt: a routed model takes images in the first (prefill) call only; "
                "suppress the image token in generation (suppress_tokens=[image_token_id])"
            )
        q_len = input_ids.shape[1]
        cache.check_room(q_len)
        cache.prepare_decode(self.plan)
        lm = self.backbone.lm_inputs(input_ids, attention_mask, position_ids, cache,
                                     **{k: v for k, v in kwargs.items() if v is not None})
        additive = self.text_config._attn_implementation == "eager"
        fn = getattr(self, "_decode_fn", None) or decode_step
        if getattr(self, "_decode_graphs", False) and lm.inputs_embeds.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        logits = fn(self.backbone, cache, lm.inputs_embeds, lm.position_ids, additive)
        if fn is not decode_step:
            logits = logits.clone()  # a CUDA-graph output is overwritten by the next replay
        cache.decoded += q_len
        return CausalLMOutputWithPast(logits=slice_logits_to_keep(logits, logits_to_keep), cache=cache)

    # ------------------------------------------------------------------ generation
    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate` with a `DPVRCache` (per-layer lengths) when a cache is used.

        ``dpvr_static_cache=True`` (or ``cache_implementation="static"``) decodes on a `DPVRStaticCache`
        sized to ``max_new_tokens`` instead: fixed shapes, compiled if `compile_decode` was called.
        """
        gen_config = kwargs.get("generation_config")
        use_cache = kwargs.get("use_cache", getattr(gen_config, "use_cache", True))
        static = kwargs.pop("dpvr_static_cache", False)
        if kwargs.get("cache_implementation") in ("static", "dpvr_static"):
            static = kwargs.pop("cache_implementation") or True
        if static and use_cache is not False and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            max_new = kwargs.get("max_new_tokens") or getattr(gen_config, "max_new_tokens", None) \
                or self.generation_config.max_new_tokens
            if not max_new:
                raise ValueError("a static cache is sized by max_new_tokens: pass generate(..., max_new_tokens=N)")
            kwargs["cache"] = DPVRStaticCache(self.text_config, max_new_tokens=int(max_new))
        if self.plan.routed and use_cache is not False and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs["cache"] = DPVRCache(config=self.text_config)
        if self.plan.prune_layer is not None and use_cache is False and kwargs.get("prompt_len") is None:
            # Without a cache every step re-reads prompt + generated tokens: FastV must rank by the
            # prompt's last token, as the cached prefill does, not by the newest generated one.
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is not None:
                kwargs["prompt_len"] = input_ids.shape[1]
        return super().generate(*args, **kwargs)

    # The family's own generation rules: its positions (Qwen2-VL's 3-D M-RoPE and rope_deltas) and the
    # inputs its forward accepts. ``prompt_len`` is dpvr's own.
    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        return self.base._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def _validate_model_kwargs(self, model_kwargs):
        return self.base._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k != "prompt_len"})

    # ------------------------------------------------------------------ parameters
    def trainable_parameter_count(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_count()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ adapters
    def save_pretrained(self, save_directory: str | Path, **_ignored) -> Path:
        """Write the side-branch weights (safetensors) and ``dpvr_config.json``, atomically."""
        from dpvr.adapter import save_adapter

        return save_adapter(self, save_directory)

    @classmethod
    def from_pretrained(cls, base: nn.Module, adapter_dir: str | Path, verify_base: bool = True) -> "DPVRModel":
        """Wrap ``base`` with the adapter saved in ``adapter_dir``; refuses an adapter made for another base."""
        from dpvr.adapter import load_adapter

        return load_adapter(cls, base, adapter_dir, verify_base=verify_base)


def get_dpvr_model(base: nn.Module, config: DPVRConfig) -> DPVRModel:
    """Wrap a loaded multimodal model (``LlavaForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``,
    ... — `dpvr.backbones.supported_model_types()`) with DPVR routing."""
    if isinstance(base, DPVRModel):
        raise TypeError("this model is already wrapped by dpvr; pass its .base to wrap it again")
    return DPVRModel(base, config)


def _compiled(fn, mode: str | None, backend, options: dict):
    """(``torch.compile`` of ``fn`` with fixed shapes, whether it replays CUDA graphs); ``backend=None``: (None, False)."""
    if backend is None:
        return None, False
    return (torch.compile(fn, mode=mode, backend=backend, **{"dynamic": False, **options}),
            mode in ("reduce-overhead", "max-autotune") or backend == "cudagraphs")
