"""An HTTP-based environment: env.py is its own FastAPI server.

envbox runs it with uvicorn inside the sandbox (the image needs fastapi and
uvicorn) and proxies the sandbox's API socket to it:

    envbox run --dir . --name demo --type http
    envbox call demo evaluate --arg task_id=1
"""

import hashlib

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class MethodCall(BaseModel):
    method: str
    args: list = []
    kwargs: dict = {}


def evaluate(task_id: int = 0, seed: int = 0, response: str = "", **kwargs) -> dict:
    digest = hashlib.sha256(f"calculator:{task_id}".encode()).digest()
    a, b = digest[0], digest[1]
    try:
        correct = int(str(response).strip()) == a + b
    except ValueError:
        correct = False
    return {"task_id": int(task_id), "question": f"What is {a} + {b}?", "score": 1.0 if correct else 0.0}


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/call")
def call(req: MethodCall):
    if req.method != "evaluate":
        return {"status": "failed", "result": {"error": f"unknown method {req.method}"}, "error": None}
    return {"status": "success", "result": evaluate(*req.args, **req.kwargs), "error": None}


@app.post("/evaluate")
def evaluate_route(body: dict):
    return evaluate(**body)
