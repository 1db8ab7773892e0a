"""big_distill: knowledge distillation of big vision models, "patient and consistent"."""

from setuptools import find_packages, setup

setup(
    name='big_distill',
    version='0.1.0',
    description='Knowledge distillation in JAX/Flax following Beyer et al., CVPR 2022.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    # configs/ ships as big_distill/configs/ (big_distill.runs.CONFIGS), so that demo and reproduce
    # find their configs after a non-editable install too.
    packages=[*find_packages(include=['big_distill', 'big_distill.*']), 'big_distill.configs'],
    package_dir={'big_distill.configs': 'configs'},
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.5,<0.11',
        'flax>=0.10,<0.13',
        'optax>=0.2.6,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'tensorflow-datasets>=4.9.7,<5',
        'tensorflow-cpu>=2.18,<2.22; platform_machine=="x86_64"',
        'tensorflow>=2.18,<2.22; platform_machine!="x86_64"',
        'tensorboard>=2.18',
        'importlib_resources',  # Needed by TFDS to prepare datasets.
        'ml-collections>=0.1.1',
        'clu>=0.0.12',
        'absl-py',
        'tqdm',  # Progress bars on a terminal.
        'safetensors',  # timm's weight files, read without torch.
        'ai-edge-litert>=1.2,<3',  # The TFLite interpreter (serving.load); tf.lite's is deprecated.
        'numpy',
        'scipy',  # Softmax of NumPy logits (inference).
        'pillow',  # Every image format users' folders hold (data/images.py).
        'matplotlib',
    ],
    extras_require={'test': [
        'pytest>=8', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel',
        # The original library that parity tests compare against (CPU use); timm needs torchvision.
        'torch>=2.9,<2.15', 'timm>=1.0,<2'],
    },
)
