"""Storage: bytes on disk, written atomically and read without running code from them.

The lowest layer: it imports nothing of top's but ``top.errors``. Every other layer may import it.
"""
