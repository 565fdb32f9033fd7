"""Idefics3 and SmolVLM: a SigLIP tower, pixel shuffle and a connector feeding a Llama decoder.

The language model is ``model.text_model`` (not ``language_model``), the projector ``connector``.
Each image is split into sub-images plus a global view, one placeholder span each, separated by
``<fake_token_around_image>``, ``<row_i_col_j>`` and ``<global-img>`` text tokens: the prefix that
ends with the last image token holds many text tokens between image spans, which the side branch
reads in place and the text view keeps. The family's own forward drops the all-zero padding
images, merges the features and calls its language model with 1-D positions.
"""

from __future__ import annotations

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class Idefics3Adapter(BackboneAdapter):
    model_types = ("idefics3", "smolvlm")
    family = "Idefics3 / SmolVLM"
    language_model_attr = "text_model"
    projector_path = "connector"

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """(image_size/patch)²/scale² tokens per tile and for the global image; the tile markers
        ``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>`` and the row newlines are text."""
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        vc = config.vision_config
        per_tile = (vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2
        p = processor.get("image", {})
        tile = p.get("tile", vc.image_size)
        _, rows, cols = SmolVLMImageProcessorPil.get_number_of_image_patches(
            SmolVLMImageProcessorPil.__new__(SmolVLMImageProcessorPil), visual.height, visual.width,
            {"do_image_splitting": True, "size": {"longest_edge": p.get("longest_edge", 4 * tile)},
             "max_image_size": {"longest_edge": tile}})
        runs: list = []
        for _ in range(rows):
            for _ in range(cols):
                runs += [("text", 2), ("image", per_tile)]  # <fake_token_around_image><row_i_col_j>
            runs.append(("text", 1))  # \n
        runs += [("text", 3 if rows else 2), ("image", per_tile), ("text", 1)]  # [\n]<fake><global-img> … <fake>
        return runs, rows * cols + 1
