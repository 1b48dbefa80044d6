"""An Actor-based environment for envbox (and for affinetes-style clients).

The Actor is created at the first call (so environment variables set with
`envbox run --env K=V` are visible in __init__); its public methods are the
environment's methods:

    envbox run --dir . --name demo
    envbox call demo evaluate --arg task_id=1
"""

import asyncio
import hashlib
import os


class Actor:
    def __init__(self):
        self.difficulty = int(os.environ.get("DIFFICULTY", "1"))
        self.calls = 0

    def _task(self, task_id: int) -> dict:
        digest = hashlib.sha256(f"calculator:{task_id}".encode()).digest()
        a, b = digest[0] * self.difficulty, digest[1] * self.difficulty
        return {"question": f"What is {a} + {b}?", "answer": a + b}

    async def evaluate(self, task_id: int = 0, seed: int = 0, response: str = "", **kwargs) -> dict:
        """Scores a response to task `task_id` (1.0 when it is the right sum)."""
        self.calls += 1
        await asyncio.sleep(0)  # async methods run on the worker's event loop
        task = self._task(int(task_id))
        try:
            correct = int(str(response).strip()) == task["answer"]
        except ValueError:
            correct = False
        return {"task_id": int(task_id), "question": task["question"], "score": 1.0 if correct else 0.0, "calls": self.calls}

    def add(self, a: float, b: float = 1) -> dict:
        """Adds two numbers (sync methods run in a thread pool)."""
        return {"sum": a + b}
