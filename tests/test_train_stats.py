"""TrainingStats alone: its sums, its logging window, its clock, and the round trip of what a checkpoint keeps."""

import torch

from base.loop.train_stats import TrainingStats


def test_steps_add_up_per_sample_and_a_window_is_taken_once():
    stats = TrainingStats()
    stats.add_step(torch.tensor(6.0), {"kl": torch.tensor(2.0)}, 3)
    stats.add_step(torch.tensor(4.0), {"kl": torch.tensor(1.0), "rec": torch.tensor(5.0)}, 2)
    assert float(stats.loss_sum) == 10.0 and stats.loss_count == 5
    keys, values, count, timed = stats.take_extras()
    assert keys == ["kl", "rec"] and [float(v) for v in values] == [3.0, 5.0] and count == 5 and timed == 5
    assert stats.extra_sums == {} and stats.extra_count == 0  # a new window
    assert stats.loss_count == 5  # the loss since the last validation is kept until a validation reads it
    stats.reset_loss()
    assert (stats.loss_sum, stats.loss_count) == (0.0, 0)


def test_the_clock_counts_the_waits_of_the_windows_after_it_started():
    stats = TrainingStats()
    stats.window_wait = 0.5  # the first window's wait came before the clock: not counted
    stats.start_window(global_step=7)
    assert stats.clock is not None and stats.clock_step == 7 and stats.data_time == 0.0
    stats.add_step(torch.tensor(1.0), {}, 4)
    stats.window_wait = 0.25
    stats.start_window(global_step=8)
    stats.window_wait = 0.125
    stats.start_window(global_step=9)
    assert stats.data_time == 0.375 and stats.clock_step == 7
    stats.add_step(torch.tensor(1.0), {}, 4)
    assert stats.take_extras()[3] == 8  # samples since the clock started
    stats.restart_clock(123.0, global_step=9)
    assert (stats.clock, stats.clock_step, stats.data_time, stats.clock_count) == (123.0, 9, 0.0, 0)
    stats.stop_clock()
    stats.window_wait = 9.0
    stats.start_window(global_step=10)  # after a validation: a new clock, the wait before it not counted
    assert stats.data_time == 0.0 and stats.clock_step == 10


def test_the_checkpointed_sums_round_trip_as_plain_numbers():
    stats = TrainingStats()
    stats.add_step(torch.tensor(3.5), {"kl": torch.tensor(0.25)}, 7)
    loss, window = stats.sums()
    assert loss == (3.5, 7) and window == ({"kl": 0.25}, 7)
    assert all(type(v) in (float, int) for v in (*loss, *window[0].values(), window[1]))  # weights_only-safe
    again = TrainingStats()
    again.load_sums(loss, window)
    assert again.sums() == (loss, window)
    again.load_sums()  # nothing carried on: from zero
    assert again.sums() == ((0.0, 0), ({}, 0))
