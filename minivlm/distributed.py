"""Contrastive training on several processes with `torch.distributed` (chapter 02).

CLIP's loss wants many negatives: every other caption in the batch. With data parallelism each
process (rank) holds only B/W pairs of the global batch, so before the loss every rank gathers
the features of all ranks and scores its images against all W·B_local texts (and vice versa).

`all_gather` returns plain copies with no gradient path back to the rank that computed them.
Each rank therefore puts its *own* features (still in its autograd graph) back into its slot:
its loss is the global loss, and its backward pass reaches its own shard of the towers. The
other ranks' shards get their gradients on their own ranks, from their own copy of the loss.

The gradient factor (checked in tests/test_distributed.py). Every rank computes the same global
loss L, but its backward reaches only its shard's features; DDP then *averages* the W ranks:

* tower parameters θ: mean_r ∂L/∂θ|shard r = (1/W) Σ_r ∂L/∂θ|shard r = (1/W) ∂L/∂θ,
  i.e. DDP's gradient is the single-process gradient on the whole batch divided by W;
* logit_scale is used directly by every rank, each gets the full ∂L/∂s, and the mean is
  ∂L/∂s: factor 1.

Adam(W) divides each gradient by its own running magnitude, so a constant factor per parameter
barely changes training, which is why CLIP implementations leave it as it is; SGD would see
the towers' learning rate divided by W.

Run it (each rank samples its own ShapesWorld stream; --batch-size is per rank):

    torchrun --nproc_per_node=2 -m minivlm.distributed --steps 200 --batch-size 64
    python -m minivlm.distributed --steps 200        # no torchrun: one process
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from minivlm.data import ShapesWorld, Tokenizer
from minivlm.losses import check_feature_pair, clip_loss
from minivlm.models.clip import CLIP, CLIPConfig, similarity
from minivlm.train import lr_factor


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_local, D) on each rank → (W·B_local, D) on every rank, rank-major (rank 0's rows first).

    This rank's slot holds its own tensors, not a copy, so gradients flow into this rank's
    towers; the other slots are constants. Every rank must have the same B_local.
    Outside a process group (or with one rank) the inputs are returned unchanged.
    """
    check_feature_pair(image_features, text_features)
    if not is_distributed():
        return image_features, text_features
    world, rank = dist.get_world_size(), dist.get_rank()
    out = []
    for local in (image_features, text_features):
        local = local.contiguous()
        slots = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(slots, local.detach())
        slots[rank] = local  # back into the graph: this rank's share of the gradient
        out.append(torch.cat(slots, dim=0))
    return out[0], out[1]


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
    """The CLIP loss over the global batch: equal on every rank, and equal to `clip_loss` of one
    process holding the whole batch. See the module docstring for the gradient factor."""
    all_images, all_texts = gather_features(image_features, text_features)  # (W·B, D) each
    return clip_loss(all_images, all_texts, logit_scale)


# ----------------------------------------------------------------------------- training script


def _setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment; one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)  # MASTER_ADDR/PORT, RANK, WORLD_SIZE come from torchrun
    rank = dist.get_rank() if is_distributed() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return rank, world, dev


def train(steps: int = 200, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, image_size: int = 32,
          log_every: int = 20, warmup: int = 10) -> dict:
    """Train the chapter's CLIP on ShapesWorld, data-parallel if launched by torchrun.

    Returns (on every rank) a dict with the final loss and rank 0's in-batch retrieval R@1 on a
    fresh held-out batch of 256 scenes.
    """


    rank, world, dev = _setup()
    torch.manual_seed(seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    config = CLIPConfig(image_size=image_size)
    model = CLIP(config).to(dev)
    net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None) if is_distributed() else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    tok = Tokenizer.from_world()
    shapes = ShapesWorld(seed=seed + 1000 * rank, image_size=image_size, split="train")  # one stream per rank

    if rank == 0:
        print(f"CLIP on ShapesWorld: {world} process(es) × batch {batch_size} = global batch {world * batch_size}, "
              f"{steps} steps, device {dev}", flush=True)
    start, loss = time.time(), torch.tensor(float("nan"))
    for step in range(steps):
        batch = shapes.batch(batch_size)
        ids, mask = tok(batch["captions"], config.context_length)
        images, ids, mask = batch["images"].to(dev), ids.to(dev), mask.to(dev)
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, steps, "cosine", warmup)
        image_features, text_features, scale = net(images, ids, mask)  # local shard (B, E) each
        loss = distributed_clip_loss(image_features, text_features, scale)  # over the global batch
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        if rank == 0 and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  scale {scale.item():6.2f}  "
                  f"{time.time() - start:6.1f} s", flush=True)

    result = {"world_size": world, "global_batch": world * batch_size, "steps": steps,
              "final_loss": float(loss.detach()), "seconds": round(time.time() - start, 2)}
    if rank == 0:
        evaluation = ShapesWorld(seed=seed, image_size=image_size, split="val").batch(256)
        ids, mask = tok(evaluation["captions"], config.context_length)
        sim = similarity(model, evaluation["images"].to(dev), (ids.to(dev), mask.to(dev)))  # (256, 256)
        target = torch.arange(len(sim), device=sim.device)
        result["val_i2t_r1"] = float((sim.argmax(1) == target).float().mean())
        result["val_t2i_r1"] = float((sim.argmax(0) == target).float().mean())
        print(json.dumps(result), flush=True)
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=20)
    a = p.parse_args(argv)
    return train(a.steps, a.batch_size, a.lr, a.seed, a.image_size, a.log_every)


if __name__ == "__main__":
    main()
