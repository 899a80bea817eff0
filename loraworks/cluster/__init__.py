"""Generation on a Ray Serve cluster (`loraworks serve --cluster`, docs/cluster.md).

The head (the FastAPI app, the manager and the queue's journal) resolves each request into a
self-contained `Job` (`jobs.py`) and sends it to a Ray Serve deployment (`deployment.py`) whose
replicas each run a `Worker` (`worker.py`): model files are read from the shared models root,
their hashes checked on first load, and the database is never opened there. Affinity is Ray
Serve's model multiplexing, keyed by the job's `stack_id` (main model + LoRA stack).

Only `deployment.py` and `head.py` import Ray, and only when a cluster is used: `import
loraworks` and the single-process server never do.
"""
