"""Streaming per-layer statistics of a LLaVA forward pass: cosine, logit lens, attention mass.

A :class:`LayerProbe` registers hooks on the language model's own decoder layers (and their
``self_attn``) and, for one batch at a time, reduces what it sees to a few numbers per sample
and layer. :class:`RunningStat` accumulates those numbers over samples (count, sum, sum of
squares), so memory stays the same whether the analysis runs on 20 samples or 20,000.

Conventions (layer ``l`` in ``0..N-1``, ``h_l`` the input of decoder layer ``l``):

- ``cosine``: ``cos(h_l, h_{l+1})`` per position — how much layer ``l`` changes the hidden state.
- ``kl``: ``KL(softmax(lm_head(norm(h_{l+1}))) || softmax(lm_head(norm(h_N))))`` — the logit
  lens of layer ``l``'s output against the final prediction; exactly 0 at ``l = N-1``.
- ``attn``: share of a text query's attention (head mean) that lands on image keys, in layer ``l``.

Each sample contributes its mean over the positions of a modality; the reported mean and
spread (standard deviation) are over samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpvr.analysis.attention import text_to_image_attention


# --------------------------------------------------------------------------- accumulation

class RunningStat:
    """Per-layer mean and spread over samples, accumulated without keeping the samples.

    ``update`` takes a ``(B, *shape)`` tensor of per-sample values; NaN marks "no value for this
    sample" (e.g. a sample without text queries after its image) and is skipped.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.count = torch.zeros(shape, dtype=torch.float64)
        self.total = torch.zeros(shape, dtype=torch.float64)
        self.total_sq = torch.zeros(shape, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        v = values.detach().to("cpu", torch.float64)
        valid = ~torch.isnan(v)
        v = torch.where(valid, v, torch.zeros_like(v))
        self.count += valid.sum(0)
        self.total += v.sum(0)
        self.total_sq += (v * v).sum(0)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.count, self.total, self.total_sq))

    def mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.total / self.count.clamp(min=1), torch.nan)

    def std(self) -> torch.Tensor:
        """Sample standard deviation over samples (0 for a single sample, NaN for none)."""
        n = self.count
        mean = self.total / n.clamp(min=1)
        var = (self.total_sq - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)
        return torch.where(n > 0, var.sqrt(), torch.nan)

    def to_dict(self) -> dict:
        return {"mean": _floats(self.mean()), "std": _floats(self.std()),
                "n": [int(c) for c in self.count.flatten().tolist()] if self.count.dim() <= 1
                else self.count.to(torch.int64).tolist()}


def _floats(t: torch.Tensor):
    """Nested lists of floats, NaN as ``None`` (valid JSON)."""
    def conv(x):
        if isinstance(x, list):
            return [conv(y) for y in x]
        return None if math.isnan(x) else float(x)
    return conv(t.tolist())


# --------------------------------------------------------------------------- batch layout

@dataclass
class BatchLayout:
    """Which positions of a right-padded batch are image, text, lens and attention-query positions.

    Everything is derived from ``input_ids``, ``attention_mask`` and the model's image token id.
    """

    image: torch.Tensor  # (B, L) bool: image-token positions
    text: torch.Tensor  # (B, L) bool: real (non-padding) positions that are not image tokens
    lens_index: torch.Tensor  # (B, P) long: positions read by the logit lens (0 where unused)
    lens_image: torch.Tensor  # (B, P) bool: lens slot is an image position
    lens_text: torch.Tensor  # (B, P) bool: lens slot is a text (answer or last) position
    queries: list[torch.Tensor]  # per sample: text positions after the first image token
    key_share: torch.Tensor  # (B,) mean share of image keys among the keys each query sees

    @property
    def seq_len(self) -> int:
        return self.image.shape[1]


def make_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    answer_mask: torch.Tensor | None = None,
    lens_positions: int = 64,
) -> BatchLayout:
    """Build the :class:`BatchLayout` of a batch.

    ``answer_mask`` (B, L) marks the positions whose *next* token is an answer token (the
    positions a language-model loss is computed at); samples without one use their last real
    position. ``lens_positions`` caps the image positions and the answer positions read by the
    logit lens per sample (each evenly spaced; 0 = all).
    """
    real = attention_mask.bool()
    image = (input_ids == image_token_id) & real
    text = real & ~image
    B, L = input_ids.shape
    lens_rows, queries, shares = [], [], []
    for b in range(B):
        img_pos = image[b].nonzero().flatten()
        img_pos = _spread(img_pos, lens_positions)
        ans = answer_mask[b].bool() & text[b] if answer_mask is not None else None
        txt_pos = _spread(ans.nonzero().flatten(), lens_positions) if ans is not None and ans.any() else None
        if txt_pos is None:
            txt_pos = real[b].nonzero().flatten()[-1:]
        lens_rows.append((img_pos, txt_pos))
        if img_pos.numel():
            first = int(image[b].nonzero()[0])
            q = (text[b] & (torch.arange(L) > first)).nonzero().flatten()
        else:
            q = torch.zeros(0, dtype=torch.long)
        queries.append(q)
        if q.numel():
            # causal: query at p sees the real keys 0..p
            n_img = torch.cumsum(image[b].long(), 0)[q].double()
            n_all = torch.cumsum(real[b].long(), 0)[q].double()
            shares.append(float((n_img / n_all).mean()))
        else:
            shares.append(math.nan)
    P = max(1, max(i.numel() + t.numel() for i, t in lens_rows))
    lens_index = torch.zeros(B, P, dtype=torch.long)
    lens_image = torch.zeros(B, P, dtype=torch.bool)
    lens_text = torch.zeros(B, P, dtype=torch.bool)
    for b, (i, t) in enumerate(lens_rows):
        ni, nt = i.numel(), t.numel()
        lens_index[b, :ni] = i
        lens_index[b, ni:ni + nt] = t
        lens_image[b, :ni] = True
        lens_text[b, ni:ni + nt] = True
    return BatchLayout(image, text, lens_index, lens_image, lens_text, queries,
                       torch.tensor(shares, dtype=torch.float64))


def _spread(positions: torch.Tensor, cap: int) -> torch.Tensor:
    """At most ``cap`` evenly spaced entries of ``positions`` (all of them for ``cap`` 0)."""
    if not cap or positions.numel() <= cap:
        return positions
    return positions[torch.linspace(0, positions.numel() - 1, cap).round().long()]


# --------------------------------------------------------------------------- model access

def language_model(model):
    """The decoder stack (``.layers``, ``.norm``) of a model of a supported family, or a clear error."""
    from dpvr.backbones import adapter_for

    return adapter_for(model).language_model


def image_token_id(model) -> int:
    """The image placeholder id of a model of a supported family."""
    from dpvr.backbones import adapter_for

    return adapter_for(model).image_token_id


def visual_token_ids(model) -> list[int]:
    """Every visual placeholder id (image and video) of a model of a supported family."""
    from dpvr.backbones import adapter_for

    return list(adapter_for(model).visual_token_ids.values())


def check_llava_style(model) -> None:
    """Refuse a model dpvr has no backbone adapter for (one message naming its type and the supported ones)."""
    from dpvr.backbones import UnsupportedModelError, adapter_for

    try:
        adapter_for(model)
    except UnsupportedModelError as err:
        raise ValueError(str(err)) from None
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head): the logit lens needs one")


# --------------------------------------------------------------------------- hooks

STATS = ("cosine_image", "cosine_text", "kl_image", "kl_text", "attn_text_to_image")


class LayerProbe:
    """Hooks on every decoder layer that reduce one batch to per-sample, per-layer statistics.

    Use as a context manager around forward passes; set :attr:`layout` before each batch and
    read :meth:`collect` after it. With ``layers`` given, only those layer indices are probed.
    """

    def __init__(self, model, *, cosine: bool = True, lens: bool = True, attention: bool = True,
                 layers: list[int] | None = None, max_scores_elements: int = 2 ** 26):
        self.model = model
        self.lm = language_model(model)
        self.num_layers = len(self.lm.layers)
        self.layers = list(range(self.num_layers)) if layers is None else list(layers)
        self.do_cosine, self.do_lens, self.do_attention = cosine, lens, attention
        self.max_scores_elements = max_scores_elements
        self.layout: BatchLayout | None = None
        self._handles = []
        self._reset()

    # -- lifecycle
    def __enter__(self) -> "LayerProbe":
        for i in self.layers:
            layer = self.lm.layers[i]
            if self.do_cosine or self.do_lens:
                self._handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
            if self.do_attention:
                self._handles.append(
                    layer.self_attn.register_forward_pre_hook(self._attn_hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._reset()

    def _reset(self) -> None:
        self._values: dict[str, dict[int, torch.Tensor]] = {k: {} for k in STATS}
        self._head_values: dict[int, torch.Tensor] = {}
        self._lens_hidden: dict[int, torch.Tensor] = {}

    # -- hooks
    def _layer_hook(self, idx: int):
        def hook(module, args, kwargs, output):
            lay = self.layout
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            if lay is None or h_in.shape[1] != lay.seq_len:
                return  # a routed layer that does not see the full sequence
            if self.do_cosine:
                cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # (B, L)
                self._values["cosine_image"][idx] = _masked_mean(cos, lay.image)
                self._values["cosine_text"][idx] = _masked_mean(cos, lay.text)
            if self.do_lens:
                index = lay.lens_index.to(h_out.device)
                self._lens_hidden[idx] = torch.gather(
                    h_out, 1, index[..., None].expand(-1, -1, h_out.shape[-1]))  # (B, P, d)
        return hook

    def _attn_hook(self, idx: int):
        def hook(module, args, kwargs):
            lay = self.layout
            hidden = args[0] if args else kwargs["hidden_states"]
            if lay is None or hidden.shape[1] != lay.seq_len:
                return
            mass, per_head = text_to_image_attention(
                module, hidden, kwargs.get("position_embeddings"), kwargs.get("attention_mask"),
                lay.queries, lay.image, self.max_scores_elements)
            self._values["attn_text_to_image"][idx] = mass
            self._head_values[idx] = per_head
        return hook

    # -- results of one batch
    @torch.no_grad()
    def collect(self) -> dict[str, torch.Tensor]:
        """Per-sample values of the last batch: ``{stat: (B, N)}`` (+ ``attn_per_head``: (B, N, H)).

        Layers that were not probed (or did not see the full sequence) hold NaN.
        """
        lay = self.layout
        B, N = lay.image.shape[0], self.num_layers
        if self.do_lens and self._lens_hidden:
            self._logit_lens()
        out = {}
        for key, per_layer in self._values.items():
            t = torch.full((B, N), math.nan, dtype=torch.float64)
            for i, v in per_layer.items():
                t[:, i] = v.detach().to("cpu", torch.float64)
            out[key] = t
        if self._head_values:
            H = next(iter(self._head_values.values())).shape[1]
            t = torch.full((B, N, H), math.nan, dtype=torch.float64)
            for i, v in self._head_values.items():
                t[:, i] = v.detach().to("cpu", torch.float64)
            out["attn_per_head"] = t
        self._reset()
        return out

    def _logit_lens(self) -> None:
        lay, lm = self.layout, self.lm
        head = self.model.get_output_embeddings()
        last = self.num_layers - 1
        if last not in self._lens_hidden:
            raise RuntimeError("the logit lens needs the last decoder layer's output; probe all layers")
        norm_dev = next(lm.norm.parameters(), torch.empty(0)).device
        head_dev = head.weight.device

        def lens(h):  # (B, P, d) -> (B, P, V) log-probabilities; layers may sit on other devices
            return head(lm.norm(h.to(norm_dev)).to(head_dev)).float().log_softmax(-1)

        log_q = lens(self._lens_hidden[last])
        img, txt = lay.lens_image.to(log_q.device), lay.lens_text.to(log_q.device)
        for i, h in self._lens_hidden.items():
            log_p = log_q if i == last else lens(h)
            p = log_p.exp()
            kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), device=p.device)).sum(-1)  # (B, P)
            self._values["kl_image"][i] = _masked_mean(kl, img)
            self._values["kl_text"][i] = _masked_mean(kl, txt)
        self._lens_hidden.clear()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, L) over ``mask`` per row; NaN for rows with an empty mask."""
    mask = mask.to(values.device)
    n = mask.sum(1)
    s = torch.where(mask, values.float(), torch.zeros((), device=values.device)).sum(1)
    return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, math.nan))
