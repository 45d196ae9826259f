"""ThreadPicker keeps the thread count whose steps were fastest, and probes again later."""

import types

import torch

from tuiwb.sae import threads as th


def test_picker_keeps_the_fastest_count_and_rechecks(monkeypatch):
    seconds_per_step = {1: 0.010, 2: 0.050}  # as if a busy neighbour made 2 threads slow
    clock = {"t": 0.0}
    monkeypatch.setattr(th.time, "perf_counter", lambda: clock["t"])
    before = torch.get_num_threads()
    picker = th.ThreadPicker([1, 2], probe_steps=2, recheck_every=10)
    trainer = types.SimpleNamespace(global_step=0)
    try:
        for step in range(30):
            trainer.global_step = step
            picker.on_train_batch_start(trainer, None, None, step)
            clock["t"] += seconds_per_step[torch.get_num_threads()]
            picker.on_train_batch_end(trainer, None, None, None, step)
            if step == 12:
                seconds_per_step = {1: 0.050, 2: 0.010}  # the neighbour left
    finally:
        torch.set_num_threads(before)
    assert picker.history[0][1] == 1 and picker.history[-1][1] == 2
    assert len(picker.history) >= 2  # it probed again after recheck_every steps
    assert th.thread_candidates(8) == [1, 4, 8] and th.thread_candidates(1) == [1]
