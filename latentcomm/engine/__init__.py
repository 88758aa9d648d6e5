"""The serving engine: a replica (one backbone + head) spoken to in protocol bytes, its dynamic and continuous
batching, and the conversions between model objects and protocol messages. No Ray here."""
