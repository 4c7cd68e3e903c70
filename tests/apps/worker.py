"""A tokenrelay worker process for multi-worker tests: the real server (create_app + uvicorn)
on a scripted, paced backend, sharing a database and Redis with its siblings."""

from __future__ import annotations

import argparse

import uvicorn

from tokenrelay.config import Settings
from tokenrelay.server import create_app
from tokenrelay.testing import ScriptedBackend

ANSWER = 'Streams survive workers: 日本語の答え, with "quotes" and } braces. ' * 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--grace", type=float, default=30.0, help="resume_grace_s")
    args = parser.parse_args()
    import json

    reply = json.dumps({"action": "Final Answer", "action_input": ANSWER}, ensure_ascii=False)
    backend = ScriptedBackend(replies=[reply], tokens_per_second=args.rate, token_size=3)
    settings = Settings(
        db=args.db,
        redis_url=args.redis,
        redis_prefix=args.prefix,
        keepalive_s=0.5,
        resume_grace_s=args.grace,
    )
    uvicorn.run(create_app(settings, backend=backend), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
