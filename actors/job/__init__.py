"""The main job (``latentcomm run``): a chain of K agents answers questions in every mode, side by side, on the
same replicas.

The first agent holds what answers the question (``actors.tasks``: a note by default, a GSM8K problem with
``--task gsm8k``); each later agent reads the message of the one before it; the last one answers in text. The
modes are the table ``modes.MODES`` (``--modes`` picks some; text always runs):

* ``latent`` — every agent but the last turns its role, its inputs and the latent it received into its own latent
  with one forward pass (``compress`` on parts, the received latent read in context); the last agent ``respond``s
  on its parts. One generation per question, whatever K.
* ``latent-decode`` — as ``latent``, but each receiver first decodes the latent to text (a generation per hop) and
  reads that text.
* ``kv`` — the peers' hand-off (KVComm, LatentMAS): every agent but the last sends the key/value cache of all it
  read (one forward pass; a relay extends the cache it received), the last one answers after it. Nothing is
  compressed, so the message grows with the chain (``latentcomm.model.kv``): the high-capacity reference for
  ``latent``.
* ``text`` (the baseline) — every agent generates its answer and sends the text.

Quality: the task's metric, the agreement of each mode's final answer with text mode's (MiniLM cosine, and R@1 of
the same question's text answer among all of text mode's answers) and the floor (the last agent with no message).
Time: the wall time of each mode, the mean hop (sender starts producing -> receiver has read it) and the last
agent's answer. ``--sweep 2 3 4 5`` runs every K on the same replicas.

The modules, in the order a run uses them: ``config`` (``JobConfig`` and its flags), ``modes`` (the table, and the
one function that sends a hop), ``run`` (chains, questions, the floor; unscored ``JobRun``), ``score`` (pure
functions to ``results``' dataclasses), ``report`` (tables, plot, ``results.json``, ``trace.jsonl``, ``run.png``
under ``runs/run-<timestamp>/``) and ``main``.
"""
