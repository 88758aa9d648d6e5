"""latentcomm inside the agent stacks builders already use: LangGraph (``langgraph``, extra ``latentcomm[langgraph]``)
and the A2A protocol (``a2a``, extra ``latentcomm[a2a]``), plus replicas in the caller's process (``local``).

Each integration imports its framework when it loads; the core never imports this package
(``tests/test_structure.py``), and this package may import the core, ``actors`` and ``protocols``.
"""
