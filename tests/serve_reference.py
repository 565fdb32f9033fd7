"""Reference greedy outputs for ``tests/test_serve_vllm.py``, made by dpvr's HF engine in the MAIN venv.

    .venv/bin/python tests/serve_reference.py OUT [--max-new-tokens 10]

vLLM's environment cannot import the engine (it pins an older transformers), so the serve test runs
this script with the main venv's Python. On the embedded default (split 4 of 8) it writes
``OUT/adapters/{kv,pc,lf,lf-sparse}/``: side branches initialised from layer 4 and then perturbed by seeded
noise (30 % of each tensor's std, so the side output differs clearly from the layer it was copied
from and a routing bug changes tokens), saved with ``save_pretrained``; and ``OUT/reference.json``:
the prompts (chat-rendered text, image file, token ids) and, for ``vanilla`` and each adapter
reloaded with ``DPVRModel.from_pretrained``, the greedy tokens of each prompt (image and EOS tokens
suppressed, so that every prompt decodes ``--max-new-tokens`` steps through the cache); and ``answers``:
what ``dpvr eval``'s generation code answers to the first question (vanilla and lf). ``lf-sparse`` fuses in layers 5 and 7 (text-only 4 and 6).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SPLIT = 4
ADAPTERS = {"kv": dict(variant="kv"), "pc": dict(variant="pc"), "lf": dict(variant="lf"),
            "lf-sparse": dict(variant="lf", fusion_layers=[5, 7])}


def prompts(checkpoint: Path) -> list[dict]:
    """The embedded examples (12 questions of different lengths), a longer system-prompted one, a text-only one,
    and a request that repeats the first one's image and question with more text after (a shared prefix)."""
    rows = [json.loads(line) for line in (checkpoint / "examples" / "examples.jsonl").read_text().splitlines()]
    out = [{"question": r["question"], "image": r["image"]} for r in rows]
    out.append({"question": rows[2]["question"], "image": rows[2]["image"],
                "system": "You are a careful assistant. Look at the whole picture before you answer."})
    out.append({"question": "What shapes can a picture show?", "image": None})
    out.append({"question": rows[0]["question"] + " Then say which colour it is.", "image": rows[0]["image"],
                "shares_prefix_with": 0})
    return out


def main() -> None:
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dpvr import DPVRConfig, DPVRModel, get_dpvr_model
    from dpvr.embedded import checkpoint_path

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = Path(checkpoint_path())
    base = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    image_id = base.config.image_token_id

    gen = torch.Generator().manual_seed(0)
    for name, fields in ADAPTERS.items():
        model = get_dpvr_model(base, DPVRConfig(split=SPLIT, **fields))
        with torch.no_grad():
            for p in model.side_branch.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.std())
        model.save_pretrained(args.out / "adapters" / name)

    items = prompts(ckpt)
    for item in items:
        messages = ([{"role": "system", "content": item["system"]}] if item.get("system") else []) + [
            {"role": "user", "content": ([{"type": "image"}] if item["image"] else [])
             + [{"type": "text", "text": item["question"]}]}]
        item["text"] = processor.apply_chat_template(messages, add_generation_prompt=True)
        images = [Image.open(ckpt / "examples" / item["image"]).convert("RGB")] if item["image"] else None
        item["_enc"] = processor(images=images, text=[item["text"]], return_tensors="pt")
        item["prompt_token_ids"] = item["_enc"]["input_ids"][0].tolist()

    # The model answers in one or two tokens; with EOS suppressed every prompt decodes max_new_tokens steps.
    eos_id = processor.tokenizer.eos_token_id
    outputs = {}
    models = {"vanilla": base} | {name: DPVRModel.from_pretrained(base, args.out / "adapters" / name) for name in ADAPTERS}
    for name, model in models.items():
        outputs[name] = []
        for item in items:
            with torch.no_grad():
                ids = model.generate(**item["_enc"], max_new_tokens=args.max_new_tokens, do_sample=False,
                                     suppress_tokens=[image_id, eos_id], pad_token_id=processor.tokenizer.pad_token_id)
            outputs[name].append(ids[0, item["_enc"]["input_ids"].shape[1]:].tolist())
    # dpvr eval's own generation code on the first question (EOS allowed): the chat-completions reference
    from dpvr.evaluation.generation import Prompt, generate, user_turn

    first = items[0]
    image = Image.open(ckpt / "examples" / first["image"]).convert("RGB")
    answers = {name: generate(models[name], processor, [Prompt([user_turn(first["question"])], [image])],
                              max_new_tokens=args.max_new_tokens)[0] for name in ("vanilla", "lf")}
    for item in items:
        del item["_enc"]
    ref = {"answers": answers, "checkpoint": str(ckpt), "split": SPLIT, "image_token_id": image_id,
           "eos_token_id": processor.tokenizer.eos_token_id, "max_new_tokens": args.max_new_tokens,
           "prompts": items, "outputs": outputs}
    tmp = args.out / ".reference.json.tmp"
    tmp.write_text(json.dumps(ref, indent=1))
    tmp.replace(args.out / "reference.json")


if __name__ == "__main__":
    main()
