"""Data-parallel Z-IL training, the idiomatic torchrun script (docs/train.md).

    torchrun --standalone --nproc-per-node 2 examples/torchrun_data_parallel.py

Every rank builds the same model from the same seed and draws the same global batches; each
learns on its slice, and pccompile.distributed averages the gradients (overlapped with Z-IL's
levels) and keeps BatchNorm statistics and dropout masks those of the global batch. Run it with
plain ``python`` and it trains the same model in one process: the printed losses agree
(float64: to about 12 digits).
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.distributed import (
    LEAF_MODULES,
    DataParallel,
    all_mean,
    global_layers,
    init_from_env,
    is_main,
    world_size,
)

DEVICE = "cpu"  # "cuda" picks nccl and nn.SyncBatchNorm (each rank its LOCAL_RANK's GPU)


def main() -> None:
    joined = init_from_env(device=DEVICE)  # gloo for the CPU; nothing without torchrun
    torch.manual_seed(0)  # the same init, batches and dropout stream on every rank
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(128, 10),
    ).double()
    leaves: tuple = ()
    if world_size() > 1:  # BatchNorm and dropout of the global batch
        model, leaves = global_layers(model, DEVICE), LEAF_MODULES
    x_all = torch.randn(512, 1, 8, 8, dtype=torch.float64)
    y_all = torch.randint(0, 10, (512,))
    batch = 64  # global batch: every rank learns on batch / world_size of it
    pcm = pccompile.convert(model, x_all[: batch // world_size()], leaf_modules=leaves)
    dp = DataParallel(pcm)  # broadcasts rank 0's weights
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(order), batch):
            (x1, x2), (y1, y2) = (
                x_all[order[i : i + batch]].chunk(2),
                y_all[order[i : i + batch]].chunk(2),
            )
            opt.zero_grad()
            with dp.no_sync():  # gradient accumulation: two global micro-batches, one all-reduce
                dp.learn(dp.shard(x1), target=dp.shard(y1), loss_fn=F.cross_entropy)
            report = dp.learn(dp.shard(x2), target=dp.shard(y2), loss_fn=F.cross_entropy)
            opt.step()
        loss = all_mean(report.loss)  # the mean of the shards' mean losses: the micro-batch's
        if is_main():
            print(f"epoch {epoch}: last micro-batch's loss {loss:.12f}")
    with torch.no_grad():
        model.eval()
        full = F.cross_entropy(model(x_all), y_all).item()
    if is_main():
        print(f"loss on all 512 samples: {full:.12f}")
    if joined:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
