"""CPU threads of the process: set once, here.

Two kinds of native thread pools compete for the cores of a small vehicle computer:
- the BLAS and OpenMP libraries under numpy (OpenBLAS, MKL, ...) read their pool size from the
  environment when they are loaded, so ``limit_native_threads`` must run before numpy is imported.
  The package's ``__init__`` calls it (every entry point imports the package first); the only BLAS
  work on the hot path is 5x5 Kalman algebra, where extra threads only spin. A value already in
  the environment wins;
- torch's intra-op pool (``model.cpu_threads``) and its inter-op pool, set by ``configure_threads``,
  which ``PerceptionPipeline`` calls with the configuration's value.
On the GPU path the frame then keeps one host thread busy (launching, waiting, tracking).
"""

from __future__ import annotations

import os

NATIVE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_configured: dict = {}


def limit_native_threads(n: int = 1) -> None:
    """BLAS pools of numpy's libraries to ``n`` threads unless the environment says otherwise
    (effective only before numpy is imported)."""
    for var in NATIVE_THREAD_ENV:
        os.environ.setdefault(var, str(n))


def configure_threads(intra_op: int) -> dict:
    """torch intra-op threads = ``intra_op`` (0: torch's default), one inter-op thread; returns what
    is in effect. Safe to call again (the inter-op pool can only be sized before first use)."""
    import torch

    limit_native_threads()
    if intra_op > 0 and torch.get_num_threads() != intra_op:
        torch.set_num_threads(intra_op)
    if not _configured.get("interop"):
        try:
            torch.set_num_interop_threads(1)
            _configured["interop"] = True
        except RuntimeError:  # already used (another pipeline in this process came first): keep it
            _configured["interop"] = False
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            **{v: os.environ.get(v) for v in NATIVE_THREAD_ENV}}
