"""Training machinery: batch order, optimisers, data parallel, logs and state files, seeds, the teacher cache.

It imports the layers below it (evaluation, method, data, storage), never a command.
"""
