"""Run a seeded random sample of mutmut's mutants of a dpvr package (``dpvr.data``, ``dpvr.engine``, ...) against two test selections.

For a 2-core machine where a full ``mutmut run`` (2,466 mutants here) does not fit: the mutants are
mutmut's own (its ``create_mutations``: same operators, same order), each applied as a whole-file
replacement in a copy of ``src/``; the "old" selection runs first, the "new" one only on its survivors.
Results go to ``OUT`` as JSON lines (idx, module, function, the diff, old/new pytest exit status;
"timeout" counts as killed). Issue 20; figures in docs/results/mutation/data.md.

    python scripts/mutation_sample.py --n 60 --seed 20 --out /tmp/mut-20.jsonl
    python scripts/mutation_sample.py --n 50 --seed 21 --exclude 20:60 --out /tmp/mut-21.jsonl
    python scripts/mutation_sample.py --package engine --n 20 --seed 30 --old tests/test_engine.py \
        tests/test_static_cache.py tests/test_families.py --new --out /tmp/mut-engine-30.jsonl
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODULES = {"data": ("generate", "questions", "scenes", "llava_format")}  # default: every module of the package
ROOT = Path(__file__).resolve().parent.parent


def _sample(n: int, seed: int, total: int, exclude: set[int]) -> list[int]:
    return [i for i in random.Random(seed).sample(range(total), n + len(exclude)) if i not in exclude][:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", default="data", help="a subpackage of dpvr (default: data)")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--exclude", default=None, help="SEED:N - leave out the mutants of that earlier sample")
    ap.add_argument("--out", required=True)
    ap.add_argument("--old", nargs="+", default=["tests/test_data_generate.py"])
    ap.add_argument("--new", nargs="*", default=["tests/test_data_questions.py", "tests/test_data_records.py"],
                    help="run on the old selection's survivors (none: skip)")
    ap.add_argument("--timeout", type=int, default=120)
    args = ap.parse_args()
    from mutmut.mutation.file_mutation import create_mutations

    pkg = ROOT / "src" / "dpvr" / args.package
    names = MODULES.get(args.package) or tuple(p.stem for p in sorted(pkg.glob("*.py")) if p.stem != "__init__")
    muts = []  # (module name, libcst module, mutation), in mutmut's order
    for name in names:
        path = pkg / f"{name}.py"
        module, found, _, _ = create_mutations(str(path), path.read_text())
        muts += [(name, module, m) for m in found]
    exclude: set[int] = set()
    if args.exclude:
        s, n = map(int, args.exclude.split(":"))
        exclude = set(random.Random(s).sample(range(len(muts)), n))
    work = Path(tempfile.mkdtemp(prefix="dpvr-mut-"))
    shutil.copytree(ROOT / "src", work / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(work / "src"))

    def run(files: list[str]):
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                                *files],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
            return r.returncode
        except subprocess.TimeoutExpired:
            return "timeout"

    print(f"{len(muts)} mutants; sampling {args.n}", flush=True)
    with open(args.out, "a") as out:
        for idx in _sample(args.n, args.seed, len(muts), exclude):
            name, module, m = muts[idx]
            target = work / "src" / "dpvr" / args.package / f"{name}.py"
            original = target.read_text()
            mutated = module.deep_replace(m.original_node, m.mutated_node).code
            target.write_text(mutated)
            try:
                old = run(args.old)
                new = run(args.new) if old == 0 and args.new else None
            finally:
                target.write_text(original)
            fn = m.contained_by_top_level_function
            diff = "".join(line for line in difflib.unified_diff(original.splitlines(True), mutated.splitlines(True), n=0)
                           if line[:1] in "+-" and line[:3] not in ("+++", "---"))
            rec = {"idx": idx, "module": name, "function": getattr(getattr(fn, "name", None), "value", None),
                   "diff": diff, "old": old, "new": new}
            out.write(json.dumps(rec) + "\n")
            print(idx, name, rec["function"], "old", old, "new", new, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
