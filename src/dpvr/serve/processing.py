"""vLLM's input processing for LLaVA (CLIP tower) without vLLM's ``llava`` module.

vLLM's own ``llava`` module imports its Pixtral support, and through it transformers' torchvision
image processor; PyPI's torchvision does not load beside CPU torch. These classes do what vLLM's
LLaVA processing does for a CLIP tower (expand each ``<image>`` to the tower's token count, batch
``pixel_values`` per image) on transformers' ``LlavaProcessor``, whose CLIP image processor falls back
to PIL when torchvision is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import BatchFeature, LlavaConfig
from transformers.models.llava import LlavaProcessor
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.clip import CLIPEncoderInfo
from vllm.model_executor.models.vision import get_num_selected_vision_tokens
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)


class DPVRLlavaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> LlavaConfig:
        return self.ctx.get_hf_config(LlavaConfig)

    def get_vision_encoder_info(self) -> CLIPEncoderInfo:
        return CLIPEncoderInfo(self.get_hf_config())

    def get_hf_processor(self, **kwargs: object) -> LlavaProcessor:
        processor = self.ctx.get_hf_processor(LlavaProcessor, **kwargs)
        if processor.patch_size is None:
            processor.patch_size = self.get_vision_encoder_info().get_patch_size()
        return processor

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        tokens = self.get_vision_encoder_info().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return get_num_selected_vision_tokens(tokens, self.get_hf_config().vision_feature_select_strategy)

    def get_image_size_with_most_features(self) -> ImageSize:
        size = self.get_vision_encoder_info().get_image_size()
        return ImageSize(width=size, height=size)

    def get_max_image_tokens(self) -> int:
        w, h = self.get_image_size_with_most_features()
        return self.get_num_image_tokens(image_width=w, image_height=h)


class DPVRLlavaDummyInputsBuilder(BaseDummyInputsBuilder[DPVRLlavaProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        w, h = self.info.get_image_size_with_most_features()
        return {"image": self._get_dummy_images(width=w, height=h, num_images=mm_counts.get("image", 0),
                                                overrides=mm_options.get("image"))}


class DPVRLlavaMultiModalProcessor(BaseMultiModalProcessor[DPVRLlavaProcessingInfo]):
    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return dict(pixel_values=MultiModalFieldConfig.batched("image"),
                    image_embeds=MultiModalFieldConfig.batched("image"))

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        image_token_id = self.info.get_hf_config().image_token_index

        def replacement(item_idx: int):
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                n = images.get_feature_size(item_idx)
            else:
                size = images.get_image_size(item_idx)
                n = self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)
            return [image_token_id] * n

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]
