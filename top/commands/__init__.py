"""The commands: one module per ``top`` sub-command, each with ``add_arguments(parser)`` and ``run(args)``.

The only layer that sees an argparse ``Namespace``: each command turns its flags into settings
objects once and hands those down. ``top.cli`` imports the commands; nothing below imports them.
"""
