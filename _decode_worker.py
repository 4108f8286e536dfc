"""A decode worker process's entry (decode_pool.DecodePool runs it with runpy, `conn` and `parent`
given): the folder as the package embedkit first, then the worker's loop."""

import os
import runpy

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # one decoding thread per worker: the workers are the parallelism

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_checkout.py"))

from embedkit import decode_pool, pipeline  # noqa: E402

decode_pool.serve(conn, parent, pipeline)  # noqa: F821  (given by the pool)
