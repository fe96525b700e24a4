"""Growth of a sharded pytree on 8 simulated CPU devices: the result stays sharded (never
gathered on one device) and equals the unsharded growth bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import growth
    from growth.models import get_family, init_model, params_of
    from growth.models.resmlp import ResMLPConfig

    assert len(jax.devices()) == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    cfg = ResMLPConfig(40, 16, 32, 2, 10)
    params = params_of(init_model("resmlp", cfg))
    spec = get_family("resmlp").spec(cfg)

    def shard(x):
        if x.ndim == 3:
            return jax.device_put(x, NamedSharding(mesh, P(None, "data", "model")))
        if x.ndim == 2 and x.shape[1] % 4 == 0:
            return jax.device_put(x, NamedSharding(mesh, P(None, "model")))
        return x

    sharded = jax.tree_util.tree_map(shard, params)
    target = dict(width={"d": 64, "h": 128}, depth={"blocks": 4}, key=3)
    for method in ["exact", "copy", "iid", "rc"]:
        a, _ = growth.grow(params, spec, method=method, **target)
        b, _ = growth.grow(sharded, spec, method=method, **target)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            assert np.array_equal(np.asarray(x), np.asarray(y)), method
        for name in ("w1", "w2"):
            s = b[name].sharding
            assert isinstance(s, NamedSharding) and not s.is_fully_replicated, (name, s)
            assert tuple(s.spec) == (None, "data", "model"), s.spec
            assert len(b[name].addressable_shards) == 8
            shard_shape = b[name].addressable_shards[0].data.shape
            assert shard_shape == (4, b[name].shape[1] // 2, b[name].shape[2] // 4), shard_shape
    print("OK")
    """
)


def test_sharded_growth_stays_sharded_and_matches_unsharded():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
