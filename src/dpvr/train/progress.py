"""Training progress for `dpvr train` and the demo: one bar with step/total, the last logged loss and the ETA.

It replaces the Trainer's own display, which also prints every log as a raw dict
(``{'loss': '0.4138', 'grad_norm': ..., 'epoch': ...}``). A resumed run starts the bar at the
checkpoint's step, so the rate and ETA cover only the steps still to run.
"""

from __future__ import annotations

from transformers import TrainerCallback

from dpvr.progress import bar


class TrainProgress(TrainerCallback):
    def __init__(self, desc: str = "train", enabled: bool = True):
        self.desc, self.enabled = desc, enabled
        self.bar = None

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.bar is None:  # opened at the first step: a resumed run's state is loaded only then
            self.bar = bar(total=state.max_steps, desc=self.desc, unit="step", enabled=self.enabled,
                           initial=state.global_step - 1)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            try:
                self.bar.set_postfix_str(f"loss {float(logs['loss']):.4f}", refresh=False)
            except (TypeError, ValueError):
                pass

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_progress(trainer, desc: str, enabled: bool) -> None:
    """Swap the Trainer's progress/printer callbacks for `TrainProgress`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainProgress(desc, enabled))
