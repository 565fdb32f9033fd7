"""Mechanism checks of a routed (DPVR) model against the vanilla backbone it wraps.

Two checks from SPEC §8 / the paper's §3.2, accumulated sample by sample:

- **shallow stack**: per layer ``l < s``, the cosine between the routed model's and the vanilla
  model's output hidden states (image and text positions separately, plus the minimum over
  all positions seen). The shallow stack is shared, so this should be 1.
- **fusion layers**: head-mean text→image attention mass of the routed model at each fusion
  layer, next to vanilla's at the same layer on the same samples (and the most-attending head).

The routed model drives the backbone's own decoder layers, so hooks on
``base.model.language_model.layers[i]`` see its shallow and fusion layers with the full sequence.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from dpvr.analysis.stats import BatchLayout, LayerProbe, RunningStat, _floats, _masked_mean, language_model


class MechanismCheck:
    """Accumulates the two checks; call :meth:`capture_vanilla` around the vanilla forward of a
    batch, then :meth:`run_routed` with the same batch."""

    def __init__(self, base, routed, split: int, fusion_layers: list[int], num_heads: int):
        self.base, self.routed = base, routed
        self.layers = language_model(base).layers
        self.split, self.fusion_layers = int(split), list(fusion_layers)
        self.cos_image = RunningStat((self.split,))
        self.cos_text = RunningStat((self.split,))
        self.cos_min = torch.full((self.split,), math.inf, dtype=torch.float64)
        self.max_abs_diff = torch.zeros(self.split, dtype=torch.float64)
        F_ = len(self.fusion_layers)
        self.attn_routed = RunningStat((F_,))
        self.attn_vanilla = RunningStat((F_,))
        self.head_routed = RunningStat((F_, num_heads))
        self.head_vanilla = RunningStat((F_, num_heads))
        self._vanilla: dict[int, torch.Tensor] = {}
        self.skipped_layers: set[int] = set()

    @contextmanager
    def capture_vanilla(self):
        """Keep the vanilla outputs of the shallow layers for the current batch (bounded: one batch)."""
        def keep(i):
            def hook(module, args, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                self._vanilla[i] = out.detach().clone()
            return hook
        handles = [self.layers[i].register_forward_hook(keep(i)) for i in range(self.split)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def run_routed(self, batch: dict, layout: BatchLayout, vanilla_values: dict[str, torch.Tensor]) -> None:
        B = layout.image.shape[0]
        cos_img = torch.full((B, self.split), math.nan, dtype=torch.float64)
        cos_txt = torch.full((B, self.split), math.nan, dtype=torch.float64)

        def compare(i):
            def hook(module, args, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                ref = self._vanilla.get(i)
                if ref is None or ref.shape != out.shape:
                    self.skipped_layers.add(i)
                    return
                cos = F.cosine_similarity(out.float(), ref.float(), dim=-1)  # (B, L)
                cos_img[:, i] = _masked_mean(cos, layout.image).double().cpu()
                cos_txt[:, i] = _masked_mean(cos, layout.text).double().cpu()
                real = (layout.image | layout.text).to(cos.device)
                if real.any():
                    self.cos_min[i] = min(float(self.cos_min[i]), float(cos[real].min()))
                    diff = (out[real].float() - ref[real].float()).abs().max()
                    self.max_abs_diff[i] = max(float(self.max_abs_diff[i]), float(diff))
            return hook

        handles = [self.layers[i].register_forward_hook(compare(i)) for i in range(self.split)]
        try:
            with LayerProbe(self.base, cosine=False, lens=False, attention=True,
                            layers=self.fusion_layers) as probe:
                probe.layout = layout
                self.routed(**batch, use_cache=False, logits_to_keep=1)
                routed_values = probe.collect()
        finally:
            for h in handles:
                h.remove()
            self._vanilla.clear()
        self.cos_image.update(cos_img)
        self.cos_text.update(cos_txt)
        idx = self.fusion_layers
        self.attn_routed.update(routed_values["attn_text_to_image"][:, idx])
        self.attn_vanilla.update(vanilla_values["attn_text_to_image"][:, idx])
        if "attn_per_head" in routed_values:
            self.head_routed.update(routed_values["attn_per_head"][:, idx])
        if "attn_per_head" in vanilla_values:
            self.head_vanilla.update(vanilla_values["attn_per_head"][:, idx])

    def to_dict(self) -> dict:
        ra, va = self.attn_routed.mean(), self.attn_vanilla.mean()
        return {
            "split": self.split,
            "fusion_layers": self.fusion_layers,
            "shallow_cosine": {
                "layers": list(range(self.split)),
                "image": self.cos_image.to_dict(),
                "text": self.cos_text.to_dict(),
                "min": _floats(torch.where(torch.isinf(self.cos_min), torch.nan, self.cos_min)),
                "max_abs_diff": _floats(self.max_abs_diff),
                "layers_not_compared": sorted(self.skipped_layers),
            },
            "fusion_attention": {
                "layers": self.fusion_layers,
                "routed": self.attn_routed.to_dict(),
                "vanilla": self.attn_vanilla.to_dict(),
                "ratio_routed_to_vanilla": _floats(ra / va),
                "routed_max_head": _floats(self.head_routed.mean().amax(-1)),
                "vanilla_max_head": _floats(self.head_vanilla.mean().amax(-1)),
            },
        }

    def summary(self) -> str:
        d = self.to_dict()
        sc = d["shallow_cosine"]
        mins = [m for m in sc["min"] if m is not None]
        lines = [f"Shallow stack (layers 0–{self.split - 1}): routed vs vanilla hidden states, cosine min over "
                 f"all positions {min(mins):.6f}, max |difference| {max(sc['max_abs_diff']):.3g}"
                 if mins else "Shallow stack: no layer could be compared"]
        fa = d["fusion_attention"]
        for j, layer in enumerate(fa["layers"]):
            r, v = fa["routed"]["mean"][j], fa["vanilla"]["mean"][j]
            if r is None or v is None:
                continue
            lines.append(f"Fusion layer {layer}: text→image attention mass {r:.4f} routed vs {v:.4f} vanilla "
                         f"(×{r / v:.2f}); most-attending head {fa['routed_max_head'][j]:.4f} vs "
                         f"{fa['vanilla_max_head'][j]:.4f}")
        return "\n".join(lines)
