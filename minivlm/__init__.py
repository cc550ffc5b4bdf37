"""minivlm: vision-language models from scratch, one chapter per paper.

Each chapter names the library modules it builds on, and each module's docstring names the
chapter that explains it.

The library behind the course notebooks. Each module's docstring names the chapter that
explains it; each chapter names the module it builds.
"""
__version__ = "0.1.0"

from minivlm.utils import device, seed_everything  # noqa: F401
