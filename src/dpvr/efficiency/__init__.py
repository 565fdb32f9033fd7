"""Efficiency of DPVR and its peers (SPEC §9): analytic FLOPs, measured latency/memory, plots.

* :mod:`dpvr.efficiency.methods` — the method list and each method's per-layer work;
* :mod:`dpvr.efficiency.flops` — analytic prefill/decode FLOPs and KV-cache bytes from a config;
* :mod:`dpvr.efficiency.latency` — measured prefill, decode, peak memory, KV-cache bytes and
  training-step time on random-weight models of a shape;
* :mod:`dpvr.efficiency.plots` — the figures.

The command line is ``dpvr bench flops|latency|train`` (:mod:`dpvr.cli.bench`).
"""
