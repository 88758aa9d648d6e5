"""Training pipeline: query sources, response generation, teacher targets, DeepSpeed training, evaluation.

Each stage is a ``latentcomm`` subcommand that reads and writes files in one run directory::

    latentcomm queries  --out runs/x                  # runs/x/queries.jsonl (id, text, split)
    latentcomm generate --run runs/x                  # runs/x/responses/shard-*.jsonl (Ray actors, resumable)
    latentcomm targets  --run runs/x                  # runs/x/targets/<teacher>.safetensors
    latentcomm train    --run runs/x --out runs/x/train  # DeepSpeed, single process or Ray Train
    latentcomm evaluate --run runs/x --head runs/x/train/head
"""
