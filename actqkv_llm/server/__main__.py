"""``python -m actqkv_llm.server``: the resident server process (see process.py)."""

import sys

from .process import main

sys.exit(main())
