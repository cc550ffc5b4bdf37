"""Gathered contrastive loss under torch.distributed (chapter 02): two CPU processes (gloo)
each holding half of a fixed global batch must reproduce the single-process loss, and DDP's
gradients must equal the single-process ones up to the factor stated in minivlm.distributed."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from minivlm.distributed import distributed_clip_loss, gather_features
from minivlm.losses import clip_loss
from minivlm.models import CLIP, CLIPConfig

WORLD, B, T = 2, 6, 8


def make_model() -> CLIP:
    torch.manual_seed(0)
    cfg = CLIPConfig(vision_dim=16, vision_depth=1, vision_heads=2, text_dim=16, text_depth=1, text_heads=2,
                     embed_dim=8, context_length=T, patch_size=8, vocab_size=50, eos_id=2)
    return CLIP(cfg).double()  # float64: the comparisons below are at 1e-6 and tighter


def global_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(B, 3, 32, 32, generator=g, dtype=torch.float64)
    ids = torch.randint(3, 50, (B, T), generator=g)
    ids[torch.arange(B), torch.randint(1, T, (B,), generator=g)] = 2  # one eos per row
    return images, ids


def _worker(rank: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = make_model()
        net = DDP(model)
        images, ids = global_batch()
        shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)  # this rank's half
        img, txt, scale = net(images[shard], ids[shard])
        all_img, all_txt = gather_features(img, txt)
        loss = distributed_clip_loss(img, txt, scale)
        local_only = clip_loss(img, txt, scale)  # what one would get without gathering
        loss.backward()  # DDP averages the gradients of the two ranks here
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        path = os.path.join(out_dir, f"rank{rank}.pt")
        torch.save(dict(loss=loss.detach(), local_only=local_only.detach(), all_img=all_img.detach(),
                        all_txt=all_txt.detach(), grads=grads), path + ".part")
        os.replace(path + ".part", path)  # whole or absent: the parent waits for it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    # fork, where the platform has it: the children inherit the imported torch instead of
    # importing it again (seconds each on a small machine); spawn elsewhere (macOS, Windows).
    method = "fork" if "fork" in mp.get_all_start_methods() and os.name == "posix" and os.uname().sysname == "Linux" \
        else "spawn"
    ctx = mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=False,
                             start_method=method)
    # Gloo's teardown can hang a rank that has done its work (pytorch/pytorch#75097; here: one rank
    # of seven runs stuck joining ProcessGroupGloo's threads after destroy_process_group, issue 24).
    # Once both ranks have saved, they get 30 s to exit, then are ended; a rank that fails still
    # raises from join(), and ranks that have not saved after 300 s fail the test.
    import time

    files = [tmp / f"rank{r}.pt" for r in range(WORLD)]
    start, saved_at = time.monotonic(), None
    while not ctx.join(timeout=1):
        now = time.monotonic()
        if saved_at is None and all(f.exists() for f in files):
            saved_at = now
        if (saved_at is not None and now - saved_at > 30) or now - start > 300:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            assert saved_at is not None, f"the ranks did not finish in 300 s (saved: {[f.exists() for f in files]})"
            break
    return [torch.load(f) for f in files]


@pytest.fixture(scope="module")
def single():
    model = make_model()
    images, ids = global_batch()
    img, txt, scale = model(images, ids)
    loss = clip_loss(img, txt, scale)
    loss.backward()
    return dict(loss=loss.detach(), img=img.detach(), txt=txt.detach(),
                grads={n: p.grad.clone() for n, p in model.named_parameters()})


def test_gathered_features_are_the_whole_batch_in_rank_order(ranks, single):
    for r in ranks:
        torch.testing.assert_close(r["all_img"], single["img"], rtol=0, atol=1e-12)
        torch.testing.assert_close(r["all_txt"], single["txt"], rtol=0, atol=1e-12)


def test_gathered_loss_equals_single_process_loss(ranks, single):
    for r in ranks:
        assert abs(r["loss"].item() - single["loss"].item()) < 1e-6
        # and gathering matters: the half-batch loss is a different number
        assert abs(r["local_only"].item() - single["loss"].item()) > 1e-3


def test_gradients_agree_up_to_the_world_size_factor(ranks, single):
    """DDP averages over ranks: towers get (1/W)·the single-process gradient, logit_scale 1×."""
    for r in ranks:
        for name, full in single["grads"].items():
            ddp = r["grads"][name]
            factor = 1 if name == "logit_scale" else WORLD
            torch.testing.assert_close(factor * ddp, full, rtol=1e-6, atol=1e-9, msg=name)
    # the check is not vacuous: some tower gradients are far from zero
    assert single["grads"]["visual.patch_embed.proj.weight"].abs().max() > 1e-3


def test_without_a_process_group_everything_is_local():
    a, b = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    ga, gb = gather_features(a, b)
    assert ga is a and gb is b
    torch.testing.assert_close(distributed_clip_loss(a, b, 2.0), clip_loss(a, b, 2.0))
    with pytest.raises(ValueError):
        gather_features(torch.randn(4, 8), torch.randn(3, 8))
