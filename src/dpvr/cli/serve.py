"""``dpvr serve``: vLLM's OpenAI-compatible server for a LLaVA folder, with a dpvr adapter routed inside vLLM.

    dpvr serve --model runs/llava --adapter runs/adapter-lf --port 8000 --max-model-len 2048

A thin wrapper over vLLM's server (every option after ``--model``/``--adapter`` goes to vLLM as it is):
the adapter is checked against the model first (a mismatch is one line, before vLLM starts), then the
server runs with ``--hf-overrides`` naming the plugin's model class (:func:`dpvr.serve.llm_kwargs`).
It needs the serve environment (``bash scripts/setup_serve.sh``; vLLM pins an older transformers than
dpvr's engine, so it cannot live in the main one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a LLaVA model (+ dpvr adapter) with vLLM's OpenAI-compatible server",
        description=(
            "Starts vLLM's OpenAI-compatible server on MODEL with the dpvr plugin; with --adapter, the adapter's "
            "variant (kv, pc, lf) is routed inside vLLM. Any other option is passed to vLLM's server unchanged "
            "(--port, --host, --max-model-len, --dtype, --enable-prefix-caching, ...). Needs the serve venv: "
            "bash scripts/setup_serve.sh."
        ),
    )
    p.add_argument("--model", required=True, help="LLaVA model folder (config.json, safetensors, processor)")
    p.add_argument("--adapter", help="dpvr adapter folder (dpvr_config.json + adapter_model.safetensors); none: vanilla")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the vLLM command, start nothing")
    p.set_defaults(func=run, accepts_extra=True)


def vllm_command(model: str, adapter: str | None, extra: list[str]) -> list[str]:
    """The server command line: vLLM's OpenAI server module with the plugin's overrides, then ``extra``."""
    from dpvr.serve import llm_kwargs

    kwargs = llm_kwargs(model, adapter)  # raises the one-line errors (missing files, base mismatch)
    if any(a == "--hf-overrides" or a.startswith("--hf-overrides=") for a in extra):
        raise ValueError("dpvr serve sets --hf-overrides itself (the plugin's architecture and the adapter); drop it")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", kwargs["model"],
           "--hf-overrides", json.dumps(kwargs["hf_overrides"])]
    if kwargs.get("enforce_eager") and "--enforce-eager" not in extra:
        cmd.append("--enforce-eager")  # lf's text-only layers cannot run in CUDA graphs
    return cmd + list(extra)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "vLLM is not installed in this environment: serving needs the serve venv (vLLM pins an older "
            "transformers than dpvr's engine). Build it with `bash scripts/setup_serve.sh` and run its "
            "`bin/dpvr serve` (default /tmp/dpvr-serve-venv/bin/dpvr)"
        )
    cmd = vllm_command(args.model, args.adapter, args.extra)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # vLLM's server replaces this process (signals, exit status)
    return 0  # pragma: no cover
