"""bench_flamingo: our resampler and gated blocks' training step against flamingo-pytorch's."""
import subprocess
import sys

import pytest

pytest.importorskip("flamingo_pytorch")

from minivlm.benchmarks import bench_flamingo  # noqa: E402


def test_bench_flamingo_times_both_at_one_configuration():
    out = bench_flamingo(batch_size=2, repeats=1, warmup=0, threads=1, dim=16, heads=2, depth=1, n_latents=2,
                         images=2, tokens=5, text_len=8)
    assert out["params_ours"] == out["params_theirs"] > 0  # the same architecture, parameter for parameter
    assert out["ours_ms"] > 0 and out["theirs_ms"] > 0 and out["ratio"] == pytest.approx(
        out["ours_ms"] / out["theirs_ms"], rel=1e-3)
    assert out["config"]["depth"] == 1 and out["threads"] == 1


def test_bench_flamingo_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        bench_flamingo(heads=0)
    r = subprocess.run([sys.executable, "-m", "minivlm.cli", "bench", "flamingo", "--image-size", "32"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments: --image-size" in r.stderr
