"""Settings: the frozen dataclasses that configure each job, whose fields declare their own flags.

One declaration per setting (its default, its check and its help), read three ways: by
``top.commands.flags`` to build the command line, by ``__post_init__`` to check a config built
from Python the way the command line checks a flag, and by ``record`` for ``run.json``. It imports
nothing of ``top`` but ``top.errors``, and neither torch nor transformers, so ``top --help`` is quick.
"""
