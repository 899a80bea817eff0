"""The generation tests' tiny SD1/SD2/SDXL pipelines and models root, shared here."""

from tests.generation.conftest import mm, pipes, pristine  # noqa: F401
