"""An LLM team: a planner, workers and a critic, each an agent, over one model client.

The planner splits a task into subtasks; the workers (with ``concurrency`` > 1, so
slow model calls interleave) draft one part each, asked all at once; the critic
scores the assembled draft, and the planner revises until the score is good enough or
the rounds run out. The model is pluggable: `OfflineModel` (the default) answers
deterministically from a hash of the prompt, so the example runs with no network and
prints the same thing every time; `--base-url` uses any OpenAI-compatible endpoint
(``/chat/completions``; the key from ``$OPENAI_API_KEY``).

    python examples/llm_team.py --task "write a launch plan" --workers 3
    python examples/llm_team.py --base-url http://localhost:8000/v1 --model llama3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import urllib.request
from typing import Protocol

import agentmesh as am


class Model(Protocol):
    """What the team needs from a model: a reply to a system prompt and a user prompt."""

    async def complete(self, system: str, prompt: str) -> str: ...


class OfflineModel:
    """A deterministic stand-in: the same prompt always gets the same answer."""

    async def complete(self, system: str, prompt: str) -> str:
        digest = hashlib.sha256(f"{system}\n{prompt}".encode()).hexdigest()
        if system.startswith("planner"):
            topic = prompt.splitlines()[0].removeprefix("task: ")
            parts = ["goals", "audience", "timeline", "risks", "budget", "metrics"]
            start = int(digest[:2], 16) % len(parts)
            chosen = [parts[(start + i) % len(parts)] for i in range(3)]
            return "\n".join(f"{topic}: {part}" for part in chosen)
        if system.startswith("critic"):
            return f"score: {5 + int(digest[:2], 16) % 6}"  # 5..10
        words = ["clear", "bold", "careful", "measured", "concrete", "lean"]
        return f"{prompt} -> a {words[int(digest[:2], 16) % len(words)]} draft ({digest[:6]})"


class OpenAIModel:
    """Any OpenAI-compatible chat endpoint, through the standard library."""

    def __init__(self, base_url: str, model: str, api_key: str | None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key

    async def complete(self, system: str, prompt: str) -> str:
        return await asyncio.to_thread(self._post, system, prompt)

    def _post(self, system: str, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
        }
        request = urllib.request.Request(self.url, json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=120) as response:
            data = json.loads(response.read())
        return str(data["choices"][0]["message"]["content"])


class Worker(am.Agent):
    concurrency = 4  # model calls are slow: let several interleave

    def __init__(self, model: Model) -> None:
        self.model = model

    async def draft(self, subtask: str) -> str:
        return await self.model.complete("worker: draft one part, briefly", subtask)


class Critic(am.Agent):
    def __init__(self, model: Model) -> None:
        self.model = model

    async def score(self, draft: str) -> int:
        answer = await self.model.complete("critic: score 0-10 as 'score: N'", draft)
        return int(answer.rsplit(":", 1)[1].strip().split()[0])


class Planner(am.Agent):
    def __init__(self, model: Model, workers: list[am.AgentRef], critic: am.AgentRef) -> None:
        self.model = model
        self.workers = workers
        self.critic = critic

    async def solve(self, task: str, rounds: int, good: int) -> tuple[int, int, str]:
        """Plan, draft in parallel, score; revise until ``good``. Returns (rounds,
        score, draft)."""
        feedback = ""
        score, draft = 0, ""
        for round_ in range(1, rounds + 1):
            plan = await self.model.complete(
                "planner: split the task into parts, one a line", f"task: {task}\n{feedback}"
            )
            parts = [line for line in plan.splitlines() if line.strip()]
            drafts = await asyncio.gather(
                *(self.workers[i % len(self.workers)].draft(p) for i, p in enumerate(parts))
            )
            draft = "\n".join(drafts)
            score = await self.critic.score(draft)
            print(f"round {round_}: {len(parts)} parts, score {score}")
            if score >= good:
                return round_, score, draft
            feedback = f"previous score {score}; improve it"
        return rounds, score, draft


async def main(args: argparse.Namespace) -> None:
    if args.base_url:
        model: Model = OpenAIModel(args.base_url, args.model, os.environ.get("OPENAI_API_KEY"))
    else:
        model = OfflineModel()
    async with am.Mesh(ask_timeout=600) as mesh:
        workers = [await mesh.spawn(Worker, model, name=f"worker{i}") for i in range(args.workers)]
        critic = await mesh.spawn(Critic, model, name="critic")
        planner = await mesh.spawn(Planner, model, workers, critic, name="planner")
        rounds, score, draft = await planner.solve(args.task, args.rounds, args.good)
    print(f"done after {rounds} round(s), score {score}:")
    print(draft)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="write a launch plan", help="what the team works on")
    parser.add_argument("--workers", type=int, default=3, help="worker agents (default 3)")
    parser.add_argument("--rounds", type=int, default=4, help="most rounds (default 4)")
    parser.add_argument("--good", type=int, default=8, help="score that ends it (default 8)")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: offline)")
    parser.add_argument("--model", default="gpt-4o-mini", help="model name for --base-url")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


if __name__ == "__main__":
    am.run(main(parse_args()))
