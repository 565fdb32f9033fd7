"""Self-distillation of the side branch from the frozen, unrouted base (``dpvr train --distill``).

Added to the language-model loss of a DPVR model (the paper's future work, §5.4 ii):

- **KL** at the supervised positions (where the LM loss is taken): ``T² · KL(p_teacher,T ‖ p_student,T)``
  between the unrouted base's and the routed model's next-token distributions at temperature T,
  summed over positions and normalised like the LM loss (by the supervised tokens of the whole
  accumulated batch). With ``top_k > 0`` the teacher's distribution is its k most likely tokens,
  renormalised (what a cache stores); the student's log-probabilities are the full-vocabulary ones.
- **Feature**: the side branch's visual states, as the ``fuse``/``kv`` layers receive them, against
  the base's visual states entering those same layers (`dpvr.engine.teacher.feature_layers`; mean
  over the layers when several receive them). ``mse``: squared error divided by the teacher state's
  squared norm, per token (scale-free across models); ``cosine``: ``1 - cos``; both averaged over the
  visual tokens of the batch (of every process, as the LM loss averages over supervised tokens).

The teacher's targets come from a live no-grad forward of the same weights with routing off, or
from a cache precomputed once per dataset (`dpvr.train.teacher_cache`); both give `BatchTargets`
of the same form, so a cached run equals a live one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpvr.data.llava_format import IGNORE_INDEX
from dpvr.engine.teacher import feature_layers, side_capture, unrouted_forward


@dataclass
class BatchTargets:
    """The teacher's targets for one batch, row-major over (sample, position)."""

    logit_values: torch.Tensor  # (S, k) teacher logits at the S supervised positions (k = V when indices is None)
    logit_indices: torch.Tensor | None  # (S, k) vocabulary ids of the values; None: the whole vocabulary in order
    states: dict[int, torch.Tensor]  # layer -> (I, d) visual states entering that layer


def supervised_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, L-1) bool: positions whose next token is supervised (logits[:, :-1] predict labels[:, 1:])."""
    return labels[:, 1:] != IGNORE_INDEX


def targets_from_logits(logits: torch.Tensor, labels: torch.Tensor, states: dict[int, torch.Tensor],
                        top_k: int) -> BatchTargets:
    """`BatchTargets` from the teacher's full logits (B, L, V) and captured visual states."""
    values = logits[:, :-1][supervised_mask(labels)].float()  # (S, V)
    indices = None
    if 0 < top_k < values.shape[-1]:
        values, indices = values.topk(top_k, dim=-1)  # (S, k) each, sorted by value
    return BatchTargets(values, indices, {k: v.float() for k, v in states.items()})


def live_targets(model, inputs: dict, layers: list[int], top_k: int) -> BatchTargets:
    """One no-grad forward of ``model``'s unrouted base on the batch."""
    logits, states = unrouted_forward(model, inputs, layers)
    return targets_from_logits(logits, inputs["labels"], states, top_k)


def kl_sum(student_logits: torch.Tensor, labels: torch.Tensor, targets: BatchTargets,
           temperature: float) -> torch.Tensor:
    """``T² · Σ_positions KL(teacher ‖ student)`` over the supervised positions (a scalar, not averaged)."""
    student = student_logits[:, :-1][supervised_mask(labels)].float() / temperature  # (S, V)
    log_q = F.log_softmax(student, dim=-1)  # (S, V)
    if targets.logit_indices is not None:
        log_q = log_q.gather(-1, targets.logit_indices)  # (S, k)
    log_p = F.log_softmax(targets.logit_values / temperature, dim=-1)  # (S, k)
    return (log_p.exp() * (log_p - log_q)).sum() * temperature ** 2


def feature_sum(student: torch.Tensor | None, teacher: dict[int, torch.Tensor], kind: str) -> torch.Tensor | None:
    """Σ over visual tokens of the mean over ``teacher``'s layers of each token's distance (None: no tokens).

    ``student`` (I, d) against each layer's states (I, d); per token, ``mse`` is ``‖s - t‖² / ‖t‖²`` and
    ``cosine`` is ``1 - cos(s, t)``: sums over tokens, so several processes' shares add up exactly.
    """
    if student is None or student.shape[0] == 0:
        return None
    student = student.float()
    terms = []
    for target in teacher.values():
        if target.shape != student.shape:
            raise ValueError(f"teacher states {tuple(target.shape)} do not match the side branch's "
                             f"{tuple(student.shape)}: the cached targets were made for other data")
        if kind == "mse":
            terms.append(((student - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-12)).sum())
        else:
            terms.append((1 - F.cosine_similarity(student, target, dim=-1)).sum())
    return torch.stack(terms).mean()


def feature_loss(student: torch.Tensor | None, teacher: dict[int, torch.Tensor], kind: str) -> torch.Tensor | None:
    """`feature_sum` averaged over the visual tokens."""
    total = feature_sum(student, teacher, kind)
    return None if total is None else total / student.shape[0]


class Distiller:
    """What a `Trainer` needs to add the distillation terms to a DPVR model's LM loss."""

    def __init__(self, model, temperature: float, kl_weight: float, feature_loss: str, feature_weight: float,
                 top_k: int = 0, cache=None):
        self.layers = feature_layers(model.plan)
        self.temperature, self.kl_weight = temperature, kl_weight
        self.feature_kind, self.feature_weight = feature_loss, feature_weight
        self.top_k, self.cache = top_k, cache
        self.metrics: dict[str, list[float]] = {"distill_kl": [], "distill_feature": []}

    def targets(self, model, inputs: dict, index: torch.Tensor | None) -> BatchTargets:
        if self.cache is not None:
            if index is None:
                raise ValueError("cached teacher targets need each example's index (IndexedDataset)")
            return self.cache.batch_targets(index.tolist(), self.layers, device=inputs["input_ids"].device)
        return live_targets(model, inputs, self.layers, self.top_k)

    def capture(self, model, input_ids: torch.Tensor):
        return side_capture(model, input_ids)

    def extra_loss(self, logits, labels, side_states, targets: BatchTargets, lm_divisor, lm_scale: float,
                   feature_divisor: float = 1.0, token_count=None) -> torch.Tensor | None:
        """The weighted terms to add to the LM loss, normalised as the Trainer normalises that loss.

        ``lm_divisor``: what the LM loss sum is divided by (the accumulated batch's supervised tokens, or
        this batch's); ``lm_scale``: the factor the Trainer applies to the LM loss afterwards (processes).
        The feature sum is divided by ``token_count(local visual tokens)`` (the count over every process
        of a multi-process run, called on every step by every process; default: the local count) times
        ``feature_divisor`` (gradient-accumulation steps), then scaled by ``lm_scale`` like the LM loss.
        A term of weight 0 is measured (logged) but not added, so it leaves training exactly as without it.
        """
        total = kl_sum(logits, labels, targets, self.temperature)
        kl = total / lm_divisor * lm_scale
        local = 0 if side_states is None else int(side_states.shape[0])
        count = local if token_count is None else token_count(local)
        fsum = feature_sum(side_states, targets.states, self.feature_kind)
        positions = targets.logit_values.shape[0]
        if positions:
            self.metrics["distill_kl"].append(float(total.detach()) / positions)  # per supervised token
        if fsum is not None:
            self.metrics["distill_feature"].append(float(fsum.detach()) / local)  # per visual token
        extra = None
        if self.kl_weight > 0:
            extra = self.kl_weight * kl
        if fsum is not None and self.feature_weight > 0:
            term = self.feature_weight * fsum / (max(count, 1) * feature_divisor) * lm_scale
            extra = term if extra is None else extra + term
        return extra

    def pop_metrics(self) -> dict[str, float]:
        """Means of the terms since the last call (for the Trainer's log), then reset."""
        out = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        for v in self.metrics.values():
            v.clear()
        return out
