"""Writes the bad-input corpus next to this file (run it to regenerate; the files are committed).

    python tests/data/bad/build.py

records/*.json(l)   LLaVA training files, read by `dpvr train` and `dpvr analyze` (image folder: this folder)
bench/*.jsonl       benchmark families, read by `dpvr eval` (copied as pope.jsonl next to images/)
adapter/*.json      adapter configs (dpvr_config.json), read by adapter loading (`dpvr eval --method adapter:`)
sweep/grids.txt     `dpvr sweep` grid arguments, one bad set per line; sweep/*.json: bad --analysis files
images/             good.png (a real image) and files that are not usable images

Cases too large to commit (a 10**6-character turn, ...) and symlinks are made by the test itself.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOOD_TURNS = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "a red circle"}]
DEEP = 5_000  # far beyond the JSON parser's recursion limit (1000)


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A PNG of ``width`` x ``height`` RGB pixels; ``rows`` None: an IDAT that is not decompressed here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def record(**kw) -> dict:
    return {"id": "r0", "image": "images/good.png", "conversations": GOOD_TURNS} | kw


def turns(*pairs) -> list:
    return [{"from": f, "value": v} for f, v in pairs]


# name -> (file content, commands it is bad input for); "both" = train and analyze
RECORDS = {
    "conversations_null": ([record(conversations=None)], "both"),
    "conversations_missing": ([{"id": "x", "image": "images/good.png"}], "both"),
    "conversations_empty": ([record(conversations=[])], "both"),
    "conversations_object": ([record(conversations={"from": "human", "value": "hi"})], "both"),
    "conversations_string": ([record(conversations="hi")], "both"),
    "turn_is_string": ([record(conversations=["<image>\nhi", "there"])], "both"),
    "turn_is_null": ([record(conversations=[None])], "both"),
    "value_int": ([record(conversations=turns(("human", "<image>\nhi"), ("gpt", 5)))], "both"),
    "value_null": ([record(conversations=turns(("human", "<image>\nhi"), ("gpt", None)))], "both"),
    "value_list": ([record(conversations=turns(("human", ["<image>", "hi"]), ("gpt", "x")))], "both"),
    "value_missing": ([record(conversations=[{"from": "human"}, {"from": "gpt", "value": "x"}])], "both"),
    "from_missing": ([record(conversations=[{"value": "<image>\nhi"}, {"from": "gpt", "value": "x"}])], "both"),
    "from_unknown": ([record(conversations=turns(("human", "<image>\nhi"), ("bot", "x")))], "both"),
    "from_int": ([record(conversations=[{"from": 1, "value": "<image>\nhi"}])], "both"),
    "image_int": ([record(image=7)], "both"),
    "image_empty": ([record(image="")], "both"),
    "image_list_of_ints": ([record(image=[1, 2])], "both"),
    "image_object": ([record(image={"path": "images/good.png"})], "both"),
    "image_long_path": ([record(image="a/" * 3000 + "x.png")], "both"),
    "image_nul_byte": ([record(image="images/go\u0000od.png")], "both"),
    "image_missing_file": ([record(image="images/none.png")], "both"),
    "image_is_folder": ([record(image="images")], "both"),
    "image_not_an_image": ([record(image="images/not_an_image.png")], "both"),
    "image_empty_file": ([record(image="images/empty.png")], "both"),
    "image_truncated": ([record(image="images/truncated.png")], "both"),
    "image_bomb_20000x20000": ([record(image="images/bomb.png")], "both"),
    "image_escapes_dotdot": ([record(image="../../../../etc/passwd")], "both"),
    "image_absolute": ([record(image="/etc/passwd")], "both"),
    "id_bool": ([record(id=True)], "both"),
    "id_list": ([record(id=[1])], "both"),
    "id_float": ([record(id=1.5)], "both"),
    "record_is_list": ([[1, 2]], "both"),
    "record_is_string": (["a record"], "both"),
    "record_is_null": ([None], "both"),
    "one_bad_among_good": ([record(id="ok"), record(id="bad", conversations=None)], "both"),
    "image_without_placeholder": ([record(conversations=turns(("human", "hi"), ("gpt", "x")))], "both"),
    "placeholder_without_image": ([{"id": "p", "conversations": GOOD_TURNS}], "both"),
    "two_placeholders_one_image": ([record(conversations=turns(("human", "<image><image>\nhi"), ("gpt", "x")))], "both"),
    "no_assistant_turn": ([{"id": "m", "conversations": turns(("human", "hi"))}], "train"),
    "empty_list": ([], "both"),
}
RAW_RECORDS = {  # files that are not a JSON list of records at all
    "empty_file.json": b"",
    "whitespace_only.json": b"  \n\n ",
    "not_json.json": b'[{"id": 1, ',
    "not_utf8.json": b'[{"id": "\xff\xfe", "conversations": []}]',
    "nan_constant.json": b'[{"id": NaN, "conversations": []}]',
    "top_level_object.json": json.dumps(record(), indent=1).encode(),
    "top_level_string.json": b'"records"',
    "top_level_number.json": b"42",
    "deeply_nested.json": b"[" * DEEP + b"]" * DEEP,
    "deeply_nested_turns.json": (b'[{"id": "d", "conversations": ' + b"[" * DEEP + b"]" * DEEP + b"}]"),
    "bad_line.jsonl": (json.dumps(record()) + "\n" + '{"id": 2,\n').encode(),
    "jsonl_line_is_list.jsonl": (json.dumps(record()) + "\n[1, 2]\n").encode(),
    "binary_garbage.json": bytes(range(256)) * 4,
}

GOOD_BENCH = {"id": "b0", "image": "images/good.png", "question": "Is there a circle?", "answer": "yes",
              "category": "random"}
MC = {"id": "m0", "image": "images/good.png", "question": "Which shape?\nA. circle\nB. square", "answer": "A",
      "options": ["circle", "square"]}
BENCH = {
    "answer_missing": [{k: v for k, v in GOOD_BENCH.items() if k != "answer"}],
    "question_missing": [{k: v for k, v in GOOD_BENCH.items() if k != "question"}],
    "id_missing": [{k: v for k, v in GOOD_BENCH.items() if k != "id"}],
    "answer_int": [GOOD_BENCH | {"answer": 1}],
    "answer_null": [GOOD_BENCH | {"answer": None}],
    "question_empty": [GOOD_BENCH | {"question": ""}],
    "question_blank": [GOOD_BENCH | {"question": "   \n"}],
    "question_list": [GOOD_BENCH | {"question": ["Is", "there"]}],
    "image_int": [GOOD_BENCH | {"image": 7}],
    "image_null": [GOOD_BENCH | {"image": None}],
    "image_escapes_dotdot": [GOOD_BENCH | {"image": "../../../../etc/passwd"}],
    "image_absolute": [GOOD_BENCH | {"image": "/etc/passwd"}],
    "image_missing_file": [GOOD_BENCH | {"image": "images/none.png"}],
    "image_not_an_image": [GOOD_BENCH | {"image": "images/not_an_image.png"}],
    "image_truncated": [GOOD_BENCH | {"image": "images/truncated.png"}],
    "image_bomb_20000x20000": [GOOD_BENCH | {"image": "images/bomb.png"}],
    "category_int": [GOOD_BENCH | {"category": 3}],
    "id_null": [GOOD_BENCH | {"id": None}],
    "id_bool": [GOOD_BENCH | {"id": False}],
    "duplicate_id": [GOOD_BENCH, GOOD_BENCH],
    "options_string": [MC | {"options": "circle, square"}],
    "options_one": [MC | {"options": ["circle"]}],
    "options_int": [MC | {"options": ["circle", 2]}],
    "options_empty_text": [MC | {"options": ["circle", ""]}],
    "options_answer_not_a_letter": [MC | {"answer": "circle"}],
    "options_answer_out_of_range": [MC | {"answer": "C"}],
    "options_too_many": [MC | {"options": [f"o{i}" for i in range(27)], "answer": "A"}],
    "record_is_list": [[1, 2]],
    "record_is_string": ["question"],
}
RAW_BENCH = {
    "not_json.jsonl": b'{"id": "b0", ',
    "not_utf8.jsonl": b'{"id": "\xff", "image": "images/good.png", "question": "q", "answer": "yes"}\n',
    "nan_id.jsonl": b'{"id": NaN, "image": "images/good.png", "question": "q", "answer": "yes"}\n',
    "deeply_nested.jsonl": b'{"id": "d", "image": "images/good.png", "question": "q", "answer": ' + b"[" * DEEP
                           + b"]" * DEEP + b"}\n",
    "second_line_bad.jsonl": (json.dumps(GOOD_BENCH) + "\n" + '{"id": "b1"\n').encode(),
}

ADAPTER = {  # patches of a real dpvr_config.json: nested dicts merge, "__delete__" removes the key
    "variant_vanilla": {"dpvr_config": {"variant": "vanilla", "split": None}},
    "variant_fastv": {"dpvr_config": {"variant": "fastv", "split": None}},
    "variant_unknown": {"dpvr_config": {"variant": "lff"}},
    "variant_int": {"dpvr_config": {"variant": 1}},
    "variant_removed": {"dpvr_config": {"variant": "__delete__"}},
    "split_string": {"dpvr_config": {"split": "2"}},
    "split_zero": {"dpvr_config": {"split": 0}},
    "split_float": {"dpvr_config": {"split": 2.0}},
    "side_depth_zero": {"dpvr_config": {"side_depth": 0}},
    "fastv_ratio_2": {"dpvr_config": {"fastv_ratio": 2.0}},
    "fusion_layers_string": {"dpvr_config": {"fusion_layers": "3"}},
    "unknown_config_field": {"dpvr_config": {"temperature": 0.5}},
    "dpvr_config_null": {"dpvr_config": None},
    "dpvr_config_list": {"dpvr_config": [1, 2]},
    "dpvr_config_missing": {"dpvr_config": "__delete__"},
    "base_model_null": {"base_model": None},
    "base_model_missing": {"base_model": "__delete__"},
    "fingerprint_list": {"base_model": {"fingerprint": [1]}},
    "format_version_string": {"format_version": "1"},
    "format_version_missing": {"format_version": "__delete__"},
}
RAW_ADAPTER = {
    "empty_file.json": b"",
    "not_json.json": b'{"format_version": 1,',
    "top_level_list.json": b"[1, 2]",
    "top_level_null.json": b"null",
    "not_utf8.json": b'{"format_version": "\xff"}',
    "deeply_nested.json": b'{"dpvr_config": ' + b"[" * DEEP + b"]" * DEEP + b"}",
}

GRIDS = [  # one bad `--grid` (and other sweep arguments) per line
    "--grid split=0",
    "--grid split=-1",
    "--grid split=a",
    "--grid split=4,4",
    "--grid split=",
    "--grid split",
    "--grid lr=nan",
    "--grid lr=inf",
    "--grid lr=-1e-3",
    "--grid lr=0",
    "--grid side_depth=0",
    "--grid num_fusion_layers=0",
    "--grid temperature=1",
    "--grid split=2 split=3",
    "--grid fusion_layers=[s+]",
    "--grid fusion_layers=4,5",
    "--grid fusion_layers=[s+1];[s+1]",
    "--grid split=2 --variants vanilla",
    "--grid split=2 --analysis sweep/analysis_not_json.json",
    "--grid split=2 --analysis sweep/analysis_deep.json",
    "--grid split=2 --analysis sweep/analysis_split_string.json",
    "--grid split=2 --analysis sweep/analysis_list.json",
    "--grid split=2 --analysis sweep/missing.json",
]
RAW_SWEEP = {
    "analysis_not_json.json": b'{"suggested_split": ',
    "analysis_deep.json": b"[" * DEEP + b"]" * DEEP,
    "analysis_split_string.json": b'{"suggested_split": "5"}',
    "analysis_list.json": b"[5]",
}


def good_png() -> bytes:
    return png(8, 8, b"".join(b"\x00" + b"\xff\x00\x00" * 8 for _ in range(8)))


IMAGES = {
    "good.png": good_png(),
    "not_an_image.png": b"this is a text file with a .png name\n",
    "empty.png": b"",
    "truncated.png": good_png()[:40],
    "bomb.png": png(20000, 20000),  # 400 Mpixels: above Pillow's decompression-bomb limit (2 x 89.5 M)
}


def write(rel: str, data: bytes) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    for name, data in IMAGES.items():
        write(f"images/{name}", data)
    for name, (records, _) in RECORDS.items():
        write(f"records/{name}.json", json.dumps(records).encode())
    for name, data in RAW_RECORDS.items():
        write(f"records/{name}", data)
    for name, records in BENCH.items():
        write(f"bench/{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    for name, data in RAW_BENCH.items():
        write(f"bench/{name}", data)
    for name, patch in ADAPTER.items():
        write(f"adapter/{name}.patch.json", json.dumps(patch).encode())
    for name, data in RAW_ADAPTER.items():
        write(f"adapter/{name}", data)
    write("sweep/grids.txt", ("\n".join(GRIDS) + "\n").encode())
    for name, data in RAW_SWEEP.items():
        write(f"sweep/{name}", data)
    write("records/train_only.txt", "".join(f"{n}.json\n" for n, (_, cmd) in RECORDS.items() if cmd == "train").encode())


if __name__ == "__main__":
    main()
