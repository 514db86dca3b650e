"""benchmarks/timing.py's jitted loop must run every round: nothing hoisted out of it.

A plain closure over the operands was hoisted by XLA:CPU (the loop then timed 10x too fast),
so the check reads the compiled HLO: every dot sits in the while loop's body.
"""

import re
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import timing  # noqa: E402


def computations(hlo: str) -> dict[str, str]:
    """Each computation's name -> its text, from ``Compiled.as_text()``."""
    parts = re.split(r"\n(?=(?:ENTRY )?%\S+ \()", hlo)
    return {re.match(r"(?:ENTRY )?%(\S+) \(", p).group(1): p for p in parts if re.match(r"(?:ENTRY )?%\S+ \(", p)}


def reachable(name: str, comps: dict[str, str]) -> set[str]:
    """``name`` and every computation it calls, transitively."""
    seen, todo = set(), [name]
    while todo:
        c = todo.pop()
        if c not in seen and c in comps:
            seen.add(c)
            todo += re.findall(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)", comps[c])
    return seen


def test_looped_keeps_every_dot_inside_the_loop():
    sets = [(jnp.full((64, 64), i, jnp.float32), jnp.eye(64, dtype=jnp.float32)) for i in range(2)]
    compiled = timing.looped(lambda x, y: x @ y, iters=3).lower(sets).compile().as_text()
    comps = computations(compiled)
    entry = next(n for n, t in comps.items() if t.startswith("ENTRY"))
    body = re.search(r"while\(.*body=%([\w.\-]+)", comps[entry]).group(1)
    in_loop = reachable(body, comps)
    with_dot = {n for n, t in comps.items() if re.search(r"\bdot\(", t)}
    assert with_dot and with_dot <= in_loop


def test_looped_returns_the_last_round():
    sets = [(jnp.full((8, 8), 2.0), jnp.eye(8)), (jnp.ones((8, 8)), jnp.full((8, 8), 3.0))]
    out = timing.looped(lambda x, y: x @ y, iters=4)(sets)
    assert float(out[0][0, 0]) == 2.0 and float(out[1][0, 0]) == 24.0


def test_looped_compiles_with_the_given_xla_options():
    sets = [(jnp.ones((4, 4)), jnp.eye(4))]
    out = timing.looped(lambda x, y: x @ y, iters=2, compiler_options={"xla_gpu_cublas_fallback": False})(sets)
    assert float(out[0][0, 0]) == 1.0
    with pytest.raises(Exception, match="xla_no_such_option"):
        timing.looped(lambda x, y: x @ y, iters=2, compiler_options={"xla_no_such_option": True})(sets)
