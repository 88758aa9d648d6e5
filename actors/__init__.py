"""Ray actors over the core: LLM replicas, agents, message routing and jobs (this layer imports Ray)."""
