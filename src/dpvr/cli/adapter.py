"""``dpvr adapter``: check an adapter folder's integrity, or re-sign it after a deliberate edit.

    dpvr adapter verify runs/lf/adapter     # manifest, weights checksum, finite values
    dpvr adapter rehash runs/lf/adapter     # after editing dpvr_config.json on purpose
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("adapter", help="verify or re-sign a DPVR adapter folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="adapter_command", metavar="ACTION")
    v = sub.add_parser("verify", help="check the manifest: config checksum, weights checksum, finite values",
                       description="Check an adapter folder: its config checksum, its weights checksum and that "
                                   "every weight is finite. One line and exit 2 on the first problem.")
    v.add_argument("adapter_dir", help="adapter folder (dpvr train: OUT/adapter)")
    v.set_defaults(func=_verify)
    r = sub.add_parser("rehash", help="re-sign dpvr_config.json after a deliberate edit (recomputes the manifest)",
                       description="Re-sign an adapter after a deliberate edit of dpvr_config.json: recompute the "
                                   "manifest (config and weights sha256). Non-finite weights stay refused.")
    r.add_argument("adapter_dir", help="adapter folder (dpvr train: OUT/adapter)")
    r.set_defaults(func=_rehash)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _verify(args) -> int:
    import hashlib
    from pathlib import Path

    import torch
    from safetensors.torch import load

    from dpvr.adapter import WEIGHTS_NAME, AdapterIntegrityError, check_integrity, read_adapter_config

    folder = Path(args.adapter_dir)
    meta = read_adapter_config(folder)
    expected = check_integrity(folder, meta)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the adapter is incomplete, save it again")
    data = weights.read_bytes()
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise AdapterIntegrityError(f"{weights} does not match the sha256 in its manifest")
    state = load(data)
    bad = sum(int((~torch.isfinite(t)).sum()) for t in state.values() if t.is_floating_point())
    if bad:
        raise AdapterIntegrityError(f"{weights} holds {bad:,d} non-finite values")
    status = "unsigned (format 1)" if expected is None else "manifest ok"
    print(f"{folder}: {status}, {len(state)} tensors, {sum(t.numel() for t in state.values()):,d} parameters, all finite")
    return 0


def _rehash(args) -> int:
    from dpvr.adapter import INTEGRITY_KEY, rehash_adapter

    meta = rehash_adapter(args.adapter_dir)
    print(f"signed {args.adapter_dir}: config sha256 {meta[INTEGRITY_KEY]['config_sha256'][:16]}...")
    return 0
