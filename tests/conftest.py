import sys
from pathlib import Path

# The test builders (tiny tokenizers, checkpoints in the published layout) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
