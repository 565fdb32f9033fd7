"""`dpvr demo`: the whole study on the embedded default in one command, with an HTML report."""

from dpvr.demo.run import DemoSettings, run_demo

__all__ = ["DemoSettings", "run_demo"]
