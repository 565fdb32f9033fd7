"""`dpvr train`, `dpvr eval`, `dpvr analyze` on saved tiny Qwen2-VL, LLaVA-NeXT and LLaVA-OneVision models.

The training data goes through the family's processor (grid-dependent image token counts), labels
are the assistant responses only, and every processor output (``image_grid_thw``,
``mm_token_type_ids``) reaches the model; the three commands run end to end and write their outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from family_dirs import build_llava_next, build_llava_onevision, build_qwen2_vl

BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava_next": build_llava_next, "llava_onevision": build_llava_onevision}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module", params=list(BUILDERS))
def family_dir(request, tmp_path_factory, qwen_dir) -> Path:
    if request.param == "qwen2_vl":
        return qwen_dir
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    from dpvr.loading import load_model

    model, processor, _ = load_model(qwen_dir / "model", dtype="float32", device="cpu")
    return model, processor


def _dataset(qwen_dir, processor, model, records):
    from dpvr.backbones import adapter_for
    from dpvr.train.family_data import ProcessorConversationDataset

    return ProcessorConversationDataset(records, qwen_dir / "data", processor, adapter_for(model).all_visual_ids())


def test_labels_are_the_answers_and_images_expand_by_their_grid(qwen_dir, qwen, tmp_path):
    from PIL import Image

    from dpvr.data.llava_format import IGNORE_INDEX
    from dpvr.train.family_data import FamilyDataCollator

    model, processor = qwen
    tok = processor.tokenizer
    Image.new("RGB", (64, 40), (200, 30, 30)).save(qwen_dir / "data" / "wide.png")  # another grid than 64x64
    records = [
        {"id": "m", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many shapes?"}, {"from": "gpt", "value": "2"}]},
        json.loads((qwen_dir / "data" / "train.json").read_text())[0],
        {"id": "t", "conversations": [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "Yes"}]},
    ]
    ds = _dataset(qwen_dir, processor, model, records)
    item = ds[0]
    learned = [int(i) for i, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(learned) == "red<|im_end|>\n2<|im_end|>\n"
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(item["input_ids"].tolist(), item["labels"].tolist()))
    image_id = model.config.image_token_id
    t, h, w = item["image_grid_thw"][0].tolist()
    assert int((item["input_ids"] == image_id).sum()) == t * h * w // 4  # the processor's count, not a CLIP grid
    counts = [int((ds[i]["input_ids"] == image_id).sum()) for i in range(2)]
    assert counts[0] != counts[1] and counts[0] > 0

    batch = FamilyDataCollator(tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["image_grid_thw"].shape == (2, 3)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)
    # the padded batch gives each sample its own loss: the collated tensors line up with the tokens
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        logits = out.logits
        singles = [model(**FamilyDataCollator(tok.pad_token_id)([ds[i]]), use_cache=False).logits[0] for i in range(3)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(logits[i, : single.shape[0]], single, rtol=1e-4, atol=1e-4)


def test_train_eval_analyze_run(family_dir, tmp_path):
    """Each command end to end on a non-LLaVA-1.5 family (Qwen2-VL: M-RoPE, grid counts; LLaVA-NeXT and
    LLaVA-OneVision: AnyRes), each with its own processor and chat template."""
    from dpvr.cli import main
    from dpvr.data.llava_format import IGNORE_INDEX
    from dpvr.loading import load_model

    qwen_dir = family_dir
    base, processor, _ = load_model(qwen_dir / "model", dtype="float32", device="cpu")
    assert base.config.model_type in BUILDERS
    record = json.loads((qwen_dir / "data" / "train.json").read_text())[0]
    item = _dataset(qwen_dir, processor, base, [record])[0]
    learned = [int(i) for i, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE_INDEX]
    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    text = processor.tokenizer.decode(learned, skip_special_tokens=True)
    assert text.replace(" ", "").replace("\n", "") == "".join(answers).replace(" ", "")
    assert int((item["input_ids"] == base.config.image_token_id).sum()) > 1  # expanded by the processor

    model = str(qwen_dir / "model")
    run = tmp_path / "train"
    assert main(["train", "--model", model, "--data", str(qwen_dir / "data" / "train.json"), "--variant", "lf",
                 "--split", "3", "--max-steps", "2", "--batch-size", "4", "--eval-samples", "2", "--out", str(run), "--no-progress"]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["global_steps"] == 2 and result["first_step_gradient"]["nonzero_grad_elements"] > 0
    assert (run / "adapter" / "dpvr_config.json").is_file()

    ev = tmp_path / "eval"
    assert main(["eval", "--model", model, "--benchmark", str(qwen_dir / "data"), "--method", "vanilla",
                 "--method", f"lf=adapter:{run / 'adapter'}", "--families", "pope", "mc", "--limit", "3",
                 "--max-new-tokens", "2", "--out", str(ev), "--device", "cpu", "--quiet"]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert set(results["methods"]) == {"vanilla", "lf"}
    for name in ("vanilla", "lf"):
        rows = (ev / "predictions" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == 6 and all("prediction" in json.loads(r) for r in rows)

    an = tmp_path / "analyze"
    assert main(["analyze", "--model", model, "--data", str(qwen_dir / "data" / "train.json"), "--num-samples", "3",
                 "--batch-size", "2", "--adapter", str(run / "adapter"), "--out", str(an), "--quiet"]) == 0
    data = json.loads((an / "saturation.json").read_text())
    assert data["num_layers"] == 6 and data["samples"]["used"] == 3
    assert (an / "saturation.png").is_file()
