"""``python -m actqkv_llm`` is the ``actqkv`` command."""

import sys

from .cli import main

sys.exit(main())
