"""Search-space definitions shipped with nasdistill (one module per space).

Each module exposes ``space``, an instance of :class:`nasdistill.spaces.SearchSpace`.
Find them by name with :func:`nasdistill.spaces.get_space`.
"""
