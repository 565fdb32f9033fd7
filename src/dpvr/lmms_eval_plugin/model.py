"""``DPVRLmms``: an lmms-eval 0.7 model that evaluates any ``dpvr eval`` method (vanilla, DPVR, LoRA, full, peers).

It loads the base once, builds the method with :func:`dpvr.evaluation.loading.load_method`, and
answers with the same batched, KV-cached greedy generation as ``dpvr eval``
(:func:`dpvr.evaluation.generation.generate`), so both give the same predictions on the same
samples. Requests are answered in the order lmms-eval gives them, ``batch_size`` at a time, grouped
by task and generation settings. Any family dpvr supports (``pretrained=DIR``), with its own
processor and chat template.

Data parallel under ``accelerate launch -m lmms_eval ...`` (on CPU: ``configs/accelerate/ddp.yaml``, gloo): each
process loads the model on its own device, reports its ``rank``/``world_size``, and lmms-eval gives
it its shard of every task's documents and merges the results on rank 0, as for its own models.
"""

from __future__ import annotations

import contextlib
import json
import warnings

from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from dpvr.evaluation.generation import Prompt, blank_image, generate, loglikelihoods, truncate_at
from dpvr.evaluation.loading import load_base, load_method
from dpvr.lmms_eval_plugin.args import context_to_messages, method_spec_from_args, strip_quotes


class DPVRLmms(lmms):
    """lmms-eval model ``dpvr`` (see :mod:`dpvr.lmms_eval_plugin` for the model args)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, adapter: str | None = None, method: str | None = None,
                 fastv_k: int | None = None, fastv_ratio: float | None = None, batch_size: int | str = 1,
                 device: str | None = None, dtype: str = "auto", max_new_tokens: int = 128, blind: bool = False,
                 attn_implementation: str = "sdpa", max_batch_size=None, **kwargs) -> None:
        super().__init__()
        if kwargs:
            warnings.warn(f"dpvr lmms-eval model: ignoring unknown model args {sorted(kwargs)}", stacklevel=2)
        self.spec = method_spec_from_args(method, adapter, fastv_k, fastv_ratio)
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.blind = bool(blind)
        device = self._setup_processes(device)
        base, processor, path = load_base(strip_quotes(pretrained), dtype=str(dtype),
                                          device=str(device) if device else "auto",
                                          attn_implementation=attn_implementation)
        self.pretrained = path
        self._stack = contextlib.ExitStack()
        loaded = self._stack.enter_context(load_method(self.spec, base, processor))
        self._model, self.processor, self.method_info = loaded.model, loaded.processor, loaded.info
        self._base = base
        self._blank = blank_image(self.processor)
        self.image_token = getattr(self.processor, "image_token", None) or "<image>"

    def _setup_processes(self, device: str | None) -> str | None:
        """Rank and world size from accelerate (one process per device, each a shard of the documents)."""
        from dpvr.lmms_eval_plugin.processes import setup_processes

        accelerator = setup_processes()
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if self._world_size > 1:
            if accelerator.device.type != "cpu" and device in (None, "auto", "cuda"):
                device = str(accelerator.device)  # cuda:<local rank>
            if self._rank == 0:
                print(f"dpvr lmms-eval model: {self._world_size} processes, data parallel", flush=True)
        return device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    # ------------------------------------------------------------------ lmms-eval plumbing
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def device(self):
        return next(self._model.parameters()).device

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def clean(self):
        self._stack.close()
        super().clean()

    def _visuals(self, doc_to_visual, task, split, doc_id) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v.convert("RGB") for v in visuals if hasattr(v, "convert")]
        if len(images) != len(visuals):
            raise ValueError(f"{task} doc {doc_id}: dpvr evaluates images only (got {[type(v).__name__ for v in visuals]})")
        return [self._blank] * len(images) if self.blind else images

    def _prompt(self, context: str, images: list) -> Prompt:
        # Task contexts mark images with LLaVA's "<image>" or the family's own token; the template renders its own.
        token = self.image_token if self.image_token in context else "<image>"
        return Prompt(context_to_messages(context, len(images), token), images)

    def _gen_settings(self, gen_kwargs: dict) -> tuple[int, list[str], dict]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new = int(gen_kwargs.pop("max_new_tokens", self.max_new_tokens))
        overrides = {}
        temperature = float(gen_kwargs.get("temperature") or 0)
        if gen_kwargs.get("do_sample") or temperature > 0:
            overrides = {"do_sample": True, "temperature": temperature or 1.0,
                         "top_p": gen_kwargs.get("top_p"), "num_beams": int(gen_kwargs.get("num_beams") or 1)}
        elif int(gen_kwargs.get("num_beams") or 1) > 1:
            overrides = {"num_beams": int(gen_kwargs["num_beams"])}
        return max_new, until, overrides

    def _batches(self, args_list: list[tuple], key) -> list[list[int]]:
        """Indices in request order, grouped by ``key`` and cut into batches of ``batch_size``."""
        groups: dict = {}
        for i, args in enumerate(args_list):
            groups.setdefault(key(args), []).append(i)
        n = self.batch_size_per_gpu
        return [idx[j:j + n] for idx in groups.values() for j in range(0, len(idx), n)]

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests) -> list[str]:
        args_list = [r.args for r in requests]
        out: list[str | None] = [None] * len(requests)

        def key(a):
            return (a[4], a[5], json.dumps(a[1], sort_keys=True, default=str))

        with tqdm(total=len(requests), desc="dpvr generate", disable=self.rank != 0) as bar:
            for batch in self._batches(args_list, key):
                max_new, until, overrides = self._gen_settings(args_list[batch[0]][1])
                prompts = []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = args_list[i]
                    prompts.append(self._prompt(context, self._visuals(doc_to_visual, task, split, doc_id)))
                texts = generate(self._model, self.processor, prompts, max_new_tokens=max_new, **overrides)
                for i, text in zip(batch, texts):
                    out[i] = truncate_at(text, until)
                    self.cache_hook.add_partial("generate_until", (args_list[i][0], args_list[i][1]), out[i])
                bar.update(len(batch))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        args_list = [r.args for r in requests]
        out: list = [None] * len(requests)
        with tqdm(total=len(requests), desc="dpvr loglikelihood", disable=self.rank != 0) as bar:
            for batch in self._batches(args_list, key=lambda a: (a[4], a[5])):
                prompts, continuations = [], []
                for i in batch:
                    context, target, doc_to_visual, doc_id, task, split = args_list[i]
                    doc = self.task_dict[task][split][doc_id]
                    continuations.append(target if isinstance(target, str) else str(target(doc)))
                    prompts.append(self._prompt(context, self._visuals(doc_to_visual, task, split, doc_id)))
                for i, res in zip(batch, loglikelihoods(self._model, self.processor, prompts, continuations)):
                    out[i] = res
                bar.update(len(batch))
        return out

    def generate_until_multi_round(self, requests) -> list[tuple[str, ...]]:
        """lmms-eval's multi-round protocol: round 0 answers the context; each later round calls the task's
        ``doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)`` for
        ``(visuals, context, terminal, round_results, info)`` and stops a doc when ``terminal`` is true.
        Docs of a batch run their rounds together; a finished doc leaves the batch."""
        args_list = [r.args for r in requests]
        out: list = [None] * len(requests)

        def key(a):
            return (a[5], a[6], json.dumps(a[1], sort_keys=True, default=str))

        with tqdm(total=len(requests), desc="dpvr multi-round", disable=self.rank != 0) as bar:
            for batch in self._batches(args_list, key):
                max_new, until, overrides = self._gen_settings(args_list[batch[0]][1])
                state = {}
                for i in batch:
                    context, _, doc_to_visual, doc_to_text, doc_id, task, split = args_list[i]
                    state[i] = {"doc": self.task_dict[task][split][doc_id], "context": context, "rounds": [],
                                "images": self._visuals(doc_to_visual, task, split, doc_id), "info": None}
                active, round_idx = list(batch), 0
                while active:
                    if round_idx:
                        still = []
                        for i in active:
                            s, doc_to_text = state[i], args_list[i][3]
                            visuals, context, terminal, rounds, info = doc_to_text(
                                s["doc"], previous_output=list(s["rounds"]), round_idx=round_idx,
                                previous_round_info=s["info"])
                            if rounds is not None:
                                s["rounds"] = list(rounds) if isinstance(rounds, (list, tuple)) else [rounds]
                            if terminal:
                                continue
                            s["context"], s["info"] = context, info
                            if visuals is not None:
                                imgs = [v.convert("RGB") for v in visuals if hasattr(v, "convert")]
                                s["images"] = [self._blank] * len(imgs) if self.blind else imgs
                            still.append(i)
                        active = still
                        if not active:
                            break
                    prompts = [self._prompt(state[i]["context"], state[i]["images"]) for i in active]
                    texts = generate(self._model, self.processor, prompts, max_new_tokens=max_new, **overrides)
                    for i, text in zip(active, texts):
                        state[i]["rounds"].append(truncate_at(text, until))
                    round_idx += 1
                for i in batch:
                    out[i] = tuple(state[i]["rounds"])
                bar.update(len(batch))
        return out

