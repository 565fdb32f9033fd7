"""Processors whose transformers module needs torchvision although their images need only PIL.

transformers 5.24's ``PixtralProcessor`` (Mistral 3 / Pixtral) imports its torchvision image
processor at module level and is marked as needing torchvision, so without torchvision a Mistral 3
checkpoint has no processor at all, although its PIL image processor (``PixtralImageProcessorPil``)
does the same work. :data:`PIL_PROCESSORS` maps such a processor's class name to an equivalent built
on the stock ``ProcessorMixin`` (same settings, same placeholder expansion, same outputs);
`dpvr.loading` uses it only where the stock class cannot be loaded.
"""

from __future__ import annotations

import numpy as np
from transformers.processing_utils import MultiModalData, ProcessorMixin


class PixtralProcessorPil(ProcessorMixin):
    """``PixtralProcessor`` without torchvision: each ``[IMG]`` becomes rows of ``[IMG]`` ended by ``[IMG_BREAK]``,
    the last by ``[IMG_END]``, one token per ``patch_size * spatial_merge_size`` pixels of the resized image."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                 image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        step = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        row = self.image_token * (int(width) // step) + self.image_break_token
        text = row * (int(height) // step)
        return text[: -len(self.image_break_token)] + self.image_end_token

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

        if image_sizes is None:
            return MultiModalData()
        step = self.patch_size * self.spatial_merge_size
        edge = self.image_processor.size["longest_edge"]
        counts = []
        for height, width in image_sizes:
            h, w = get_resize_output_image_size(np.zeros((height, width, 3)), size=(edge, edge), patch_size=(step, step))
            counts.append((w // step + 1) * (h // step))
        return MultiModalData(num_image_tokens=counts, num_image_patches=[1] * len(image_sizes))

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


#: stock processor class name -> its torchvision-free equivalent
PIL_PROCESSORS = {"PixtralProcessor": PixtralProcessorPil}
