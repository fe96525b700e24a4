"""Multi-host growth through ``jax.distributed``: two local CPU processes (4 devices each) form
one 2x4 mesh; a globally sharded params pytree grows, and each process's addressable shards of
the result equal the matching slices of an unsharded single-process growth, bit for bit, with
the PartitionSpecs kept; a NaN anywhere in a global leaf is refused by every process; the
sharded result saved by both processes (``save_checkpoint`` as a collective) loads in one process
equal to the unsharded growth."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import numpy as np
import pytest

import growth
from growth.formats.checkpoint import load_checkpoint
from growth.models import get_family, init_model, params_of
from growth.models.resmlp import ResMLPConfig
from growth.spec import leaves_with_paths

WORKER = textwrap.dedent(
    """
    import os, sys, traceback
    import jax

    def die(*exc):  # exit at once: jax's atexit shutdown barrier would wait for the peer
        traceback.print_exception(*exc)
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = die
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
        initialization_timeout=60,
    )
    import numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    import growth
    from growth.models import get_family, init_model, params_of
    from growth.models.resmlp import ResMLPConfig

    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    assert jax.local_device_count() == 4
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"),
                axis_types=(AxisType.Auto,) * 2)
    cfg = ResMLPConfig(40, 16, 32, 2, 10)
    # the same deterministic host params in both processes (shapes only from the model: no
    # init compile)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: params_of(init_model("resmlp", cfg)))
    params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    spec = get_family("resmlp").spec(cfg)

    def pspec(x):
        if x.ndim == 3:
            return P(None, "data", "model")
        if x.ndim == 2 and x.shape[1] % 4 == 0:
            return P(None, "model")
        return P()

    def shard(x):
        s = NamedSharding(mesh, pspec(x))
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    sharded = jax.tree_util.tree_map(shard, params)
    assert not sharded["w1"].is_fully_addressable
    target = dict(width={"d": 64, "h": 128}, depth={"blocks": 4}, key=3)
    for method in ["exact", "copy", "iid"]:
        ref, _ = growth.grow(params, spec, method=method, **target)  # unsharded, this process
        got, _ = growth.grow(sharded, spec, method=method, **target)
        paths = growth.spec.leaves_with_paths(got)
        for (path, y), x in zip(paths, jax.tree_util.tree_leaves(ref), strict=True):
            x = np.asarray(x)
            assert y.shape == x.shape and y.dtype == x.dtype, (method, path)
            for sh in y.addressable_shards:
                assert np.array_equal(np.asarray(sh.data), x[sh.index]), (method, path, sh.index)
            src = growth.spec.leaves_with_paths(sharded)
        for (path, y), (_, s) in zip(paths, src, strict=True):
            if s.sharding.is_fully_replicated:
                continue
            assert isinstance(y.sharding, NamedSharding), (method, path, y.sharding)
            assert y.sharding.spec == s.sharding.spec, (method, path, y.sharding.spec)
            assert len(y.addressable_shards) == 4
        w1 = got["w1"]
        assert w1.addressable_shards[0].data.shape == (4, 64 // 2, 128 // 4)
    # a collective save: each process writes its own shards; the test loads it in one process
    from growth.formats.checkpoint import save_checkpoint
    grown, _ = growth.grow(sharded, spec, method="exact", **target)
    save_checkpoint(out, grown, {"saved": 1})
    try:
        save_checkpoint(out, grown, {"saved": 2})
        raise AssertionError("existing checkpoint overwritten")
    except growth.CheckpointError as e:
        assert "already exists" in str(e), e
    save_checkpoint(out, grown, {"saved": 3}, overwrite=True)
    # the finiteness check sees the whole global leaf: every process refuses the same leaf
    bad = dict(params, w2=params["w2"].copy())
    bad["w2"][1, -1, -1] = np.nan  # lives in a shard of the other process for one of them
    try:
        growth.plan_growth(jax.tree_util.tree_map(shard, bad), spec, **target)
        raise AssertionError("NaN not detected")
    except growth.GrowthError as e:
        assert "'w2' contains NaN" in str(e), e
    print(f"OK {pid}", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_pair(out: str, timeout: float = 180) -> list[tuple[int, str]]:
    """Run WORKER as processes 0 and 1; returns ``[(returncode, output)]``. Fails the test if
    they have not finished within ``timeout`` s; if one fails, the other (which would wait for
    it in a collective) is killed at once."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    port = str(_free_port())
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), port, out], env=env, stdout=log, stderr=log
        )
        for i, log in enumerate(logs)
    ]
    deadline = time.monotonic() + timeout
    try:
        while None in (codes := [p.poll() for p in procs]):
            if any(codes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for log in logs:
        log.seek(0)
        outs.append("".join(line for line in log if not line.startswith("[Gloo]")))
        log.close()
    if time.monotonic() > deadline:
        pytest.fail(f"multi-host workers timed out after {timeout}s:\n" + "\n---\n".join(outs))
    return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


# two processes x 4 devices (~15 s): in the slow suite (CI runs it)
@pytest.mark.slow
def test_multihost_growth_matches_single_process(tmp_path):
    out = tmp_path / "grown"
    results = _run_pair(str(out))
    report = "\n".join(f"--- process {i} (rc={rc}):\n{out[-4000:]}" for i, (rc, out) in
                        enumerate(results))  # fmt: skip
    assert all(rc == 0 and f"OK {i}" in out for i, (rc, out) in enumerate(results)), report
    # the checkpoint both processes saved (shards of 8 devices in 2 processes) loads here, on
    # one process, as numpy, equal to this process's unsharded growth bit for bit
    cfg = ResMLPConfig(40, 16, 32, 2, 10)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: params_of(init_model("resmlp", cfg)))
    params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    ref, _ = growth.grow(
        params, get_family("resmlp").spec(cfg), method="exact",
        width={"d": 64, "h": 128}, depth={"blocks": 4}, key=3,
    )  # fmt: skip
    loaded, meta = load_checkpoint(out)
    assert meta == {"saved": 3}
    for (path, x), y in zip(leaves_with_paths(ref), jax.tree_util.tree_leaves(loaded), strict=True):
        assert isinstance(y, np.ndarray) and y.dtype == x.dtype, path
        np.testing.assert_array_equal(y, np.asarray(x), err_msg=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown"]  # no tmp/old siblings left
