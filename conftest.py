"""Test configuration for the whole repository (tests/ and notebooks/ via nbval).

Quick mode is switched on here, before any notebook kernel starts (kernels inherit this
process's environment), so notebooks shrink their training and evaluation under pytest.
"""

import os

os.environ["LDM_MINI_QUICK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
