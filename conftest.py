"""Test configuration for the whole repository (tests/ and notebooks/ via nbval).

Quick mode is switched on here, before any notebook kernel starts (kernels inherit this
process's environment), so notebooks shrink their training and evaluation under pytest.
"""

import os

os.environ["LDM_MINI_QUICK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (`make test` runs `pytest -n 2 --dist loadfile`: one worker per core,
# each test file and each notebook whole on one worker), every worker and the notebook kernels
# it starts use one thread, so that two workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
