"""A stdlib-only, sync environment for the benchmark."""
import hashlib


def noop():
    return None


def evaluate(task_id: int = 0, seed: int = 0, **kwargs):
    h = hashlib.sha256(f"{task_id}:{seed}".encode()).digest()
    return {"task_id": task_id, "score": h[0] / 255}
