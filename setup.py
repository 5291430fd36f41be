from setuptools import find_packages, setup

setup(
    name="scoresde",
    version="0.1.0",
    description="Score-based generative modelling with SDEs, on JAX: training, "
    "reverse-time samplers, probability-flow likelihoods, verified on exact scores.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["scoresde", "scoresde.*"]),
    package_data={"scoresde": ["assets/*", "evaluation/assets/*"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.14",
        "jaxlib>=0.10,<0.14",
        "flax>=0.10,<0.14",
        "optax>=0.2.4,<0.4",
        "orbax-checkpoint>=0.11,<0.14",
        "ml-collections>=1.0,<2",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "tensorflow-datasets>=4.9.7,<5",
        "diffrax>=0.6.2,<0.9",
        "scikit-learn>=1.4,<2",
        "Pillow>=10,<13",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
    ],
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"]},
    entry_points={"console_scripts": ["scoresde=scoresde.cli:run"]},
)
