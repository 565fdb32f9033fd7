"""``DPVRLlavaForConditionalGeneration``: a stock LLaVA checkpoint (CLIP + Llama) plus a dpvr adapter, in vLLM.

vLLM builds it when a LLaVA folder is loaded with
``hf_overrides={"architectures": ["DPVRLlavaForConditionalGeneration"], "dpvr_adapter": ADAPTER_DIR}``
(``dpvr serve`` and :func:`dpvr.serve.llm_kwargs` set this); without ``dpvr_adapter`` it is plain LLaVA
(``vanilla``). The vision tower, projector and language model are vLLM's own layers with the
checkpoint's weights; the side branch is D more vLLM Llama decoder layers with the adapter's weights.

Per forward (one flat batch of prefill chunks and decode tokens; image rows = the image token id):
layers ``0..s-1`` run as usual; the side branch runs on every row with its own attention and KV cache
(so an image prefix split across prefill chunks or found in the prefix cache sees the same context as in
one pass); each deep layer then runs in its mode (:mod:`dpvr.serve.routing`). The side branch's output
is read only at image rows, which exist only in prefill: at decode it adds its D layers on the new
tokens and nothing reads them, unless a later image in the same sequence needs them as context.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaDecoderLayer
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    get_layer_index,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from dpvr.serve.adapter import load_serve_adapter, side_branch_state
from dpvr.serve.processing import (
    DPVRLlavaDummyInputsBuilder,
    DPVRLlavaMultiModalProcessor,
    DPVRLlavaProcessingInfo,
)
from dpvr.serve.routing import SlotFlags, fuse_layer, text_layer

ARCHITECTURE = "DPVRLlavaForConditionalGeneration"
# (vLLM's fused parameter, HF parameter, shard) for the side layers' weights.
_STACKED = ((".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"), (".qkv_proj", ".v_proj", "v"),
            (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1))


class _Projector(nn.Module):
    """LLaVA's two-layer MLP projector (vLLM's parallel linears, HF parameter names)."""

    def __init__(self, vision_hidden: int, text_hidden: int, act: str, bias: bool, quant_config, prefix: str):
        super().__init__()
        self.linear_1 = ColumnParallelLinear(vision_hidden, text_hidden, bias=bias, quant_config=quant_config,
                                             prefix=f"{prefix}.linear_1")
        self.act = get_act_fn(act)
        self.linear_2 = RowParallelLinear(text_hidden, text_hidden, bias=bias, quant_config=quant_config,
                                          prefix=f"{prefix}.linear_2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.linear_1(x)
        x, _ = self.linear_2(self.act(x))
        return x


def _hf_name(name: str) -> str:
    """Checkpoint key -> this module's parameter name (legacy and 5.x LLaVA layouts, flat 5.x CLIP)."""
    for old, new in (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector."), ("lm_head.", "language_model.lm_head.")):
        if name.startswith(old):
            name = new + name[len(old):]
            break
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        name = "vision_tower.vision_model." + name[len("vision_tower."):]
    return name


@MULTIMODAL_REGISTRY.register_processor(DPVRLlavaMultiModalProcessor, info=DPVRLlavaProcessingInfo,
                                        dummy_inputs=DPVRLlavaDummyInputsBuilder)
class DPVRLlavaForConditionalGeneration(nn.Module, SupportsMultiModal):
    # forward needs the token ids to find the image rows of the flat batch
    requires_raw_input_tokens = True

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError("Only image modality is supported")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.config = config
        adapter = load_serve_adapter(vllm_config.model_config.model, getattr(config, "dpvr_adapter", None))
        self.dpvr_config, self.plan, self._adapter_weights = adapter.config, adapter.plan, adapter.weights
        self.image_token_id = config.image_token_index
        self.configure_mm_token_handling(vocab_size=config.text_config.vocab_size,
                                         mm_token_ids=[config.image_token_index])
        vision = config.vision_config
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionModel(
                vision, quant_config=quant_config,
                num_hidden_layers_override=get_layer_index(config.vision_feature_layer, vision.num_hidden_layers),
                require_post_norm=False, prefix=maybe_prefix(prefix, "vision_tower"))
            self.multi_modal_projector = _Projector(
                vision.hidden_size, config.text_config.hidden_size, config.projector_hidden_act or "gelu",
                getattr(config, "multimodal_projector_bias", True), quant_config,
                maybe_prefix(prefix, "multi_modal_projector"))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(vllm_config=vllm_config, hf_config=config.text_config,
                                                             prefix=maybe_prefix(prefix, "language_model"))
        n = config.text_config.num_hidden_layers
        text_vllm_config = vllm_config.with_hf_config(config.text_config)
        # Side layers get layer indices after the backbone's, so their attention has its own KV cache.
        self.side_layers = nn.ModuleList(
            LlamaDecoderLayer(text_vllm_config, prefix=maybe_prefix(prefix, f"dpvr_side.{n + j}"),
                              config=config.text_config)
            for j in range(self.plan.side_depth))
        self._flags = SlotFlags()
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ------------------------------------------------------------------ multimodal inputs
    def embed_multimodal(self, **kwargs: object):
        pixel_values = kwargs.pop("pixel_values", None)
        image_embeds = kwargs.pop("image_embeds", None)
        if image_embeds is not None:
            return image_embeds
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        features = self.vision_tower(pixel_values.to(self.vision_tower.dtype),
                                     feature_select_strategy=self.config.vision_feature_select_strategy)
        return self.multi_modal_projector(features)  # (images, tokens, d)

    # ------------------------------------------------------------------ the routed stack
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        lm = self.language_model.model
        if not self.plan.routed:  # vanilla: vLLM's LLaVA forward (its compiled Llama model where enabled)
            return lm(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)
        hidden = inputs_embeds if inputs_embeds is not None else lm.embed_input_ids(input_ids)  # (n, d)
        plan, layers = self.plan, lm.layers
        residual = None
        for i in range(plan.split):
            hidden, residual = layers[i](positions, hidden, residual)
        x = hidden + residual  # (n, d) residual stream after layer s-1
        n = x.shape[0]
        is_image = input_ids[:n] == self.image_token_id  # (n,)
        side, side_res = x, None
        for layer in self.side_layers:
            side, side_res = layer(positions, side, side_res)
        side = side + side_res  # (n, d); read at image rows only
        text_layers = plan.layers_with_mode("text")
        if text_layers:
            self._flags.record(layers[text_layers[0]], is_image)
        for i in plan.deep_layers:
            if plan.modes[i] == "text":
                x = text_layer(layers[i], x, positions, is_image, self._flags)
            else:  # fuse, or kv (same text outputs, see routing.fuse_layer)
                x = fuse_layer(layers[i], x, positions, is_image, side)
        return lm.norm(x)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self)
        loaded = loader.load_weights(((_hf_name(k), v) for k, v in weights), mapper=WeightsMapper())
        if self._adapter_weights is not None:
            loaded |= self._load_side_weights()
        return loaded

    def _load_side_weights(self) -> set[str]:
        state = side_branch_state(self._adapter_weights)
        if sorted(state) != list(range(len(self.side_layers))):
            raise ValueError(f"{self._adapter_weights} has side layers {sorted(state)}, the config says "
                             f"{len(self.side_layers)}; the adapter is corrupt, save it again")
        params = dict(self.side_layers.named_parameters())
        loaded = set()
        for j, tensors in state.items():
            for name, tensor in tensors.items():
                target, shard = f"{j}.{name}", None
                for fused, part, shard_id in _STACKED:
                    if part in target:
                        target, shard = target.replace(part, fused), shard_id
                        break
                if target not in params:
                    raise ValueError(f"{self._adapter_weights}: side-branch tensor {name!r} of layer {j} has no "
                                     "place in a Llama decoder layer; the adapter is for another backbone")
                param = params[target]
                loader_fn = getattr(param, "weight_loader", default_weight_loader)
                loader_fn(param, tensor) if shard is None else loader_fn(param, tensor, shard)
                loaded.add(f"side_layers.{target}")
        return loaded
