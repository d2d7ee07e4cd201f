import re
import sys

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', open("ofa_prompt/version.py", encoding="utf-8").read()).group(1)

# fairseq 0.12.2 does not import on Python >= 3.11 (mutable dataclass defaults);
# fairseq-fixed is the same code, importable as `fairseq`, that does.
FAIRSEQ = "fairseq-fixed==0.12.3.1" if sys.version_info >= (3, 11) else "fairseq==0.12.2"

setup(
    name="ofa_prompt",
    version=VERSION,
    description="Prefix prompt tuning for OFA as a fairseq plugin (--user-dir ofa_prompt)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["ofa_prompt", "ofa_prompt.*"]),
    package_data={"ofa_prompt": ["fairseq_options.txt"]},  # yaml_config checks option names against it
    install_requires=[
        FAIRSEQ,
        # the CPU-only 2.13.0 wheel found on some machines breaks the torchvision that timm imports
        "torch>=2.1,!=2.13.0+cpu",
        "timm",  # the ResNet blocks and stochastic depth (it brings torchvision)
        "pillow",
        "numpy",
        "pycocoevalcap",
        "safetensors",
        "pyyaml",
    ],
    extras_require={
        "experiments": ["matplotlib"],  # experiments/*.py plots
        "tensorboard": ["tensorboard"],  # fairseq-train --tensorboard-logdir
        # the tests run the experiments and that flag, and `ruff check` (tests/test_lint.py; the minor version
        # pinned: ruff's rules, the preview blank-line rules of ruff.toml above all, change between minor versions)
        "test": ["pytest", "matplotlib", "tensorboard", "ruff>=0.17,<0.18"],
    },
)
