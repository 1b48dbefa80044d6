"""A function-based environment for envbox (and for affinetes-style clients).

Every public module-level function is a method of the environment:

    envbox run --dir . --name demo
    envbox call demo evaluate --arg task_id=1
    envbox call demo add --arg a=2 --arg b=3
"""

import hashlib
import os


def _task(task_id: int) -> dict:
    """The task of a task id: deterministic, so evaluations are reproducible."""
    digest = hashlib.sha256(f"calculator:{task_id}".encode()).digest()
    a, b = digest[0], digest[1]
    return {"question": f"What is {a} + {b}?", "answer": a + b}


def evaluate(task_id: int = 0, seed: int = 0, response: str = "", **kwargs) -> dict:
    """Scores a response to task `task_id` (1.0 when it is the right sum)."""
    task = _task(int(task_id))
    try:
        correct = int(str(response).strip()) == task["answer"]
    except ValueError:
        correct = False
    return {
        "task_id": int(task_id),
        "seed": seed,
        "question": task["question"],
        "score": 1.0 if correct else 0.0,
        "hostname": os.uname().nodename,
    }


def add(a: float, b: float = 1) -> dict:
    """Adds two numbers."""
    return {"sum": a + b}
