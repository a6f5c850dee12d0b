"""gptune: GPT-1's pretrain-then-fine-tune recipe as a command-line toolkit on the Hugging Face stack."""

from gptune.errors import GptuneError

__version__ = "0.1.0"
__all__ = ["GptuneError", "__version__"]
