import sys

from setuptools import find_packages, setup

# fairseq 0.12.2 does not import on Python >= 3.11 (mutable dataclass defaults);
# fairseq-fixed is the same code, importable as `fairseq`, that does.
FAIRSEQ = "fairseq-fixed==0.12.3.1" if sys.version_info >= (3, 11) else "fairseq==0.12.2"

setup(
    name="ofa_prompt",
    version="0.1.0",
    description="Prefix prompt tuning for OFA as a fairseq plugin (--user-dir ofa_prompt)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["ofa_prompt", "ofa_prompt.*"]),
    install_requires=[
        FAIRSEQ,
        # torchvision must import next to torch (timm needs it): the CUDA-enabled registry
        # builds do, the CPU-only 2.13.0 wheel found on some machines does not.
        "torch>=2.1,!=2.13.0+cpu",
        "torchvision",
        "timm",
        "pillow",
        "numpy",
        "pycocoevalcap",
        "safetensors",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={"test": ["pytest"]},
)
