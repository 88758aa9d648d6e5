"""Research jobs that end in a report: latent chaining (``chain``) and full-JEPA heads (``jepa``).

They may import the core, ``training``, ``benchmarks`` and ``actors``; nothing imports them.
"""
