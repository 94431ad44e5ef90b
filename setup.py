from setuptools import find_packages, setup

setup(
    name="attentive",
    version="0.1.0",
    description="Once-for-all weight-sharing NAS with AttentiveNAS sampling: train one elastic supernet, "
    "export a subnet for every compute budget.",
    python_requires=">=3.10",
    packages=find_packages(include=["attentive", "attentive.*", "predictors", "predictors.*"]),
    py_modules=["train", "search"],
    package_data={"attentive": ["spaces/*.yaml"]},  # the named search spaces: load_space("tiny")
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "fvcore>=0.1.5",
        "xgboost>=2.0",
        "scikit-learn>=1.3",  # the predictor's Gaussian-process teacher (predictors/teacher.py) and the baselines
        "numpy>=1.24",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.12",
    ],
    extras_require={
        "dev": ["pytest>=7", "onnx>=1.15", "onnxruntime>=1.17"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
    entry_points={
        "console_scripts": [
            "attentive-train=train:main",
            "attentive-search=search:main",
            "attentive-retrain-predictor=predictors.retrain:main",
        ]
    },
)
