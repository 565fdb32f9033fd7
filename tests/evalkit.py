"""Test helper for the evaluation tests: generated benchmark + a tiny random LLaVA that answers yes or no.

``build(root)`` writes ``root/data`` (``dpvr data generate``, 6 questions per family) and ``root/model``
(a random tiny LLaVA with a tokenizer trained on that data). The model's output head is rewired so
that its first answer token is "Yes" or "No", chosen by the sign of a random projection of the last
hidden state. The projection is centred on the benchmark's yes/no prompts, so about half of them
get "Yes": with ``max_new_tokens=1`` every answer parses, the POPE figures are non-trivial, and
they depend on the image. Offline, CPU, a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def build(root: Path) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from dpvr.data.generate import generate_dataset
    from dpvr.tiny.tokenizer import make_processor, train_tokenizer, training_texts

    generate_dataset(root / "data", seed=0, num_train=12, num_test_per_family=6, progress=False)
    records = json.loads((root / "data" / "train.json").read_text())
    tok = train_tokenizer(training_texts(records) + ["ASSISTANT: Yes", "ASSISTANT: No"] * 50, vocab_size=400)
    yes, no = (tok.encode(w, add_special_tokens=False) for w in ("Yes", "No"))
    assert len(yes) == len(no) == 1, (yes, no)
    processor = make_processor(tok, 32, 16)  # 4 image tokens
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.lm_head.weight  # (V, d)
        h = _head_inputs(model, processor, root / "data")  # (n, d)
        w = torch.linalg.svd(h - h.mean(0), full_matrices=False).Vh[0]  # main direction of variation
        m = h.mean(0) / h.mean(0).norm()
        w = w - (w @ m) * m  # scores w·h_i are centred: about half yes
        head.zero_()
        head[yes[0]] = w
        head[no[0]] = -w
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root


def _head_inputs(model, processor, data: Path) -> torch.Tensor:
    """The output head's input at the last prompt position, for the benchmark's yes/no questions."""
    from PIL import Image

    from dpvr.evaluation.generation import Prompt, encode, user_turn
    from dpvr.evaluation.runner import load_records

    records = [r for fam in load_records(data, ["pope"]).values() for r in fam]  # the yes/no family
    prompts = [Prompt([user_turn(r["question"])], [Image.open(data / r["image"]).convert("RGB")]) for r in records]
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(args[0][:, -1]))
    try:
        model(**encode(processor, prompts))
    finally:
        hook.remove()
    return seen[0]
