"""The batch order: a seeded permutation per epoch, optionally grouped by length; and the progress callback."""

import torch

import top
from top.training import batch_order


def lengths_of(n, seed=0):
    return torch.randint(3, 60, (n,), generator=torch.Generator().manual_seed(seed))


def steps(order, epoch):
    return [order.indices(epoch * order.steps_per_epoch + s) for s in range(order.steps_per_epoch)]


def test_grouped_order_covers_every_example_once_per_epoch_in_length_sorted_batches():
    lengths = lengths_of(1000)
    plain = batch_order.BatchOrder(1000, 8, seed=3)
    grouped = batch_order.BatchOrder(1000, 8, seed=3).group_by_length(lengths)
    assert grouped.steps_per_epoch == plain.steps_per_epoch == 125
    for epoch in range(2):
        seen = torch.cat([local for local, _ in steps(grouped, epoch)])
        assert sorted(seen.tolist()) == list(range(1000))
    padded = {name: sum(int(lengths[local].max()) * len(local) for local, _ in steps(order, 0))
              for name, order in (("plain", plain), ("grouped", grouped))}
    real = int(lengths.sum())
    # Sorted megabatches leave little padding; random batches pad to near the maximum.
    assert padded["grouped"] < 1.05 * real < padded["plain"] / 1.4
    # Batches are not in length order across the epoch (shuffled), and epochs differ.
    maxima = [int(lengths[local].max()) for local, _ in steps(grouped, 0)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    assert [c.tolist() for _, c in steps(grouped, 0)] != [c.tolist() for _, c in steps(grouped, 1)]
    again = batch_order.BatchOrder(1000, 8, seed=3).group_by_length(lengths)
    assert [c.tolist() for _, c in steps(again, 1)] == [c.tolist() for _, c in steps(grouped, 1)]


def test_grouped_order_keeps_a_short_last_batch_last_and_ranks_share_global_batches():
    lengths = lengths_of(101, seed=1)
    for rank in range(2):
        order = batch_order.BatchOrder(101, 4, seed=5, world_size=2, rank=rank).group_by_length(lengths)
        assert order.steps_per_epoch == 13  # 12 full global batches of 8, and 5 left for the two ranks
        local, chunk = order.indices(12)
        assert len(chunk) == 5 and local.tolist() == chunk[rank::2].tolist()
        for s in range(12):
            local, chunk = order.indices(s)
            assert len(chunk) == 8
            spread = lengths[chunk]
            assert int(spread.max() - spread.min()) <= 10


def test_the_callback_hears_every_finetune_step_and_evaluation(tmp_path):
    from builders import tiny_model_dir, write_custom_csv

    model = tiny_model_dir(tmp_path / "model", layers=2)
    train = write_custom_csv(tmp_path / "train.csv", n=24, seed=1)
    heard = []
    config = top.FinetuneConfig(model=str(model), train_file=str(train), validation_file=str(train), batch_size=8,
                                epochs=2, max_seq_length=32, group_by_length=True, device="cpu", no_progress=True,
                                output_dir=str(tmp_path / "out"))
    result = top.finetune(config, callback=heard.append)
    steps = [(e.command, e.step, e.total_steps) for e in heard if e.kind == "step"]
    assert steps == [("finetune", step, 6) for step in range(1, 7)]
    evaluations = [e for e in heard if e.kind == "evaluation"]
    assert [e.step for e in evaluations] == [3, 6] and all("score" in e.values for e in evaluations)
    assert result.last_dir == tmp_path / "out" / "last" and result.summary["steps"] == 6
