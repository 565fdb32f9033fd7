"""The routing engine: index maps between views, masks, per-layer cache, side branch, routed pass."""
