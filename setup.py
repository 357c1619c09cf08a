"""hyperrep_hf: learning from populations of neural networks, the Hugging Face way."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hyperrep_hf",
    version="0.1.0",
    description="Hyper-representations (SANE) of neural network weights as transformers models, "
    "model zoos as datasets",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"hyperrep_hf": ["metrics/*/*.py", "templates/*.md"]},
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=5.0,<6",
        "huggingface_hub>=1.0,<3",
        "datasets>=4.0,<6",
        "accelerate>=1.0,<2",
        "safetensors>=0.4,<1",
        "evaluate>=0.4,<0.5",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "scikit-learn>=1.4,<2",
        "pandas>=2.0,<4",
        "tqdm>=4.66,<5",
        "pyyaml>=6.0,<7",
        "matplotlib>=3.8,<4",
        "mlxtend>=0.23,<1",
        # training logs to TensorBoard by default (trackio too, when installed)
        "tensorboard>=2.15,<3",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            "ruff>=0.6,<1",
            "olah>=0.5,<1",
        ],
        "tracking": ["trackio>=0.2,<1"],
    },
    entry_points={"console_scripts": ["hyperrep=hyperrep_hf.cli:main"]},
)
