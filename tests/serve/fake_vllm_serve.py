"""``python fake_vllm_serve.py BASE --host H --port P --enable-lora ...``: a stand-in for
``vllm serve`` 0.26.0 holding to vLLM's rules for what apprentice relies on (each rule's
source file is named where it is kept). The engine's rules (SamplingParams checks,
adapter validation, the prefix cache keyed by adapter name) are those of
``tests/lm/fake_vllm.py``; this adds the server's:

- vllm/entrypoints/openai/models/serving.py ``load_lora_adapter``: a name already loaded
  is refused (400) unless ``load_inplace``, which keeps the name and its int id; a path
  with no adapter is 404; any other failure of ``add_lora`` is 500 (InternalServerError).
  Unloading forgets the name only: the engine keeps its cache.
- vllm/entrypoints/openai/chat_completion/protocol.py ``to_sampling_params``: every
  sampling field the request leaves out comes from the model's generation_config (here
  Llama-3.2's temperature 0.6, top_p 0.9, and a repetition penalty); a value
  SamplingParams refuses is 400.
- ``VLLM_API_KEY``: /v1 requests need ``Authorization: Bearer <key>`` (401).
- vllm/entrypoints/serve/exception_handling/utils.py ``sanitize_message`` (0.32): an error
  message shows ``<path>`` where a file path was.

An answer's text says which weights produced it and with which sampling values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lm"))
from fake_vllm import LLM, LoRAAdapterNotFoundError, LoRARequest, SamplingParams  # noqa: E402

# Llama-3.2-1B-Instruct's sampling values, and a repetition penalty as Qwen2.5's has
GENERATION_CONFIG = {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.05}
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def sanitized(message: str) -> str:
    """vLLM's ``sanitize_message``: file paths in an error message become ``<path>``."""
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    return re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message).strip()


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.served_model_name or args.model
        self.llm = LLM(args.model, max_lora_rank=args.max_lora_rank, max_loras=args.max_loras)
        self.loras: dict[str, LoRARequest] = {}
        self.ids = itertools.count(1)
        self.key = os.environ.get("VLLM_API_KEY")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, *args) -> None:
        print(self.requestline, flush=True)

    def _send(self, status: int, body) -> None:
        text = isinstance(body, str)  # vLLM's load/unload answer a bare string
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": sanitized(message), "code": status}})

    def _authorized(self) -> bool:
        key = self.state.key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Unauthorized")
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            return self._send(200, "")
        if not self._authorized():
            return None
        state = self.state
        cards = [{"id": state.name, "root": state.llm.model, "parent": None}]
        cards += [
            {"id": name, "root": lora.lora_path, "parent": state.name}
            for name, lora in state.loras.items()
        ]
        return self._send(200, {"object": "list", "data": cards})

    def do_POST(self) -> None:
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if not self._authorized():
            return None
        routes = {
            "/v1/load_lora_adapter": self.load,
            "/v1/unload_lora_adapter": self.unload,
            "/v1/chat/completions": self.chat,
        }
        return routes[self.path](data)

    def load(self, data: dict) -> None:
        name, path, inplace = data.get("lora_name"), data.get("lora_path"), data.get("load_inplace")
        loras, engine = self.state.loras, self.state.llm.llm_engine
        if not name or not path:
            return self._error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if not inplace and name in loras:
            return self._error(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        lora_id = loras[name].lora_int_id if name in loras else next(self.state.ids)
        request = LoRARequest(name, lora_id, path)
        try:
            if inplace:  # vllm/lora/worker_manager.py: load_inplace reads the adapter again
                engine.weights.pop(lora_id, None)
            engine.add_lora(request)
        except LoRAAdapterNotFoundError as exc:
            # vllm/entrypoints/openai/models/serving.py: the 404 carries the worker's words
            # without the engine client's wrapping
            return self._error(404, getattr(exc, "detail", str(exc)))
        except Exception as exc:
            return self._error(500, str(exc))
        loras[name] = request
        return self._send(200, f"Success: LoRA adapter '{name}' added successfully.")

    def unload(self, data: dict) -> None:
        name = data.get("lora_name")
        if name not in self.state.loras:
            return self._error(404, f"The lora adapter '{name}' cannot be found.")
        del self.state.loras[name]
        return self._send(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def chat(self, data: dict) -> None:
        state = self.state
        model = data.get("model") or state.name
        if model != state.name and model not in state.loras:
            return self._error(404, f"The model `{model}` does not exist.")
        values = {
            name: data[name] if data.get(name) is not None else GENERATION_CONFIG.get(name, default)
            for name, default in DEFAULTS.items()
        }
        try:
            params = SamplingParams(n=data.get("n") or 1, stop=data.get("stop"), **values)
        except ValueError as exc:
            return self._error(400, str(exc))
        prompt = "\n".join(m["content"] for m in data["messages"])
        ids = [ord(c) for c in prompt]
        lora = state.loras.get(model)
        [output] = state.llm.generate([{"prompt_token_ids": ids}], [params], lora_request=[lora])
        choices = [
            {"index": c.index, "message": {"role": "assistant", "content": c.text}}
            | {"finish_reason": c.finish_reason}
            for c in output.outputs
        ]
        usage = {"prompt_tokens": len(ids), "completion_tokens": 2 * len(choices)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": model}
        return self._send(200, reply | {"choices": choices, "usage": usage, "created": 0})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=1)
    parser.add_argument("--served-model-name")
    # vllm/config/model.py ModelDType; vllm/engine/arg_utils.py --kv-cache-memory-bytes
    parser.add_argument(
        "--dtype", choices=("auto", "half", "float16", "bfloat16", "float", "float32")
    )
    parser.add_argument("--kv-cache-memory-bytes", type=int)
    args = parser.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake vllm serve on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
