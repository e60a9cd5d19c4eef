"""Test set-up: 8 fake CPU devices for every test, set before JAX is imported."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow must not grab accelerators or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
