"""The routes of apprentice's OpenAI-compatible server (see ``serve.server``), apart from
the HTTP plumbing: ``ServingApp.handle`` takes a method, path, headers and body and gives
back a status and a JSON body, a plain-text body or None, or raises ``HTTPError``.

Generation hands each request to the shared ``LocalEngine`` (``engine.submit``) and waits
for it: the engine's batching thread gathers what the server's threads submit together.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.lm.base import LMError, Request
from apprentice.serve.protocol import (
    HTTPError,
    chat_messages,
    choice_texts,
    completion_body,
    json_object,
    prompt_messages,
    sampling_options,
)

if TYPE_CHECKING:
    from apprentice.lm.local import LocalLM

__all__ = ["ServingApp"]

log = logging.getLogger(__name__)


class ServingApp:
    """The routes, apart from the HTTP plumbing: ``handle`` -> (status, JSON, text or None)."""

    def __init__(
        self,
        lm: LocalLM,
        *,
        model_name: str,
        api_key: str | None = None,
        adapter_root: Path | None = None,
    ) -> None:
        self.lm = lm
        self.engine = lm.engine
        self.model_name = model_name
        self.api_key = api_key
        self.adapter_root = adapter_root
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/load_lora_adapter"): self.load_lora_adapter,
            ("POST", "/v1/unload_lora_adapter"): self.unload_lora_adapter,
        }

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        if path.startswith("/v1/"):
            self._authorize(headers.get("Authorization"))
        route = self.routes.get((method, path))
        if route is None:
            if any(path == p for _, p in self.routes):
                raise HTTPError(405, f"{path} does not take {method}")
            known = sorted({p for _, p in self.routes})
            raise HTTPError(404, f"no route {method} {path}; this server serves {known}")
        return route(body)

    def _authorize(self, header: str | None) -> None:
        if self.api_key is None:
            return
        if not header:
            raise HTTPError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise HTTPError(401, "invalid API key")

    # -- models ------------------------------------------------------------------------
    def health(self, body: bytes) -> tuple[int, Any]:
        return 200, None

    def models(self, body: bytes) -> tuple[int, Any]:
        cards = [self._card(self.model_name, self.engine.base_model, None, None)]
        for name in self.engine.adapter_names():
            path, digest = self.engine.adapter_path(name), self.engine.adapter_hash(name)
            cards.append(self._card(name, path, self.model_name, digest))
        return 200, {"object": "list", "data": cards}

    @staticmethod
    def _card(name: str, root: str | None, parent: str | None, digest: str | None) -> dict:
        card = {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "apprentice",
            "root": root,
            "parent": parent,
            "max_model_len": None,
            "permission": [],
        }
        if digest is not None:
            card["adapter_hash"] = digest
        return card

    def _adapter_for(self, data: dict[str, Any]) -> tuple[str | None, str]:
        """(adapter or None for the base, the model name answered) from the ``model`` field."""
        name = data.get("model")
        if name is None or name == "" or name == self.model_name:
            return None, self.model_name  # as vLLM: no model means the base model
        if not isinstance(name, str):
            raise HTTPError(400, f"'model' must be a string, got {name!r}", param="model")
        if name in self.engine.adapter_names():
            return name, name
        served = [self.model_name, *self.engine.adapter_names()]
        raise HTTPError(404, f"The model `{name}` does not exist; served: {served}", param="model")

    # -- generation ----------------------------------------------------------------------
    def chat_completions(self, body: bytes) -> tuple[int, Any]:
        data = json_object(body)
        adapter, name = self._adapter_for(data)
        messages = chat_messages(data.get("messages"))
        [response] = self._generate([messages], adapter, name, sampling_options(data, chat=True))
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(choice_texts(response))
        ]
        return 200, completion_body("chatcmpl", "chat.completion", name, choices, [response])

    def completions(self, body: bytes) -> tuple[int, Any]:
        data = json_object(body)
        adapter, name = self._adapter_for(data)
        prompt = data.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise HTTPError(
                400, "'prompt' must be a string or a non-empty list of strings", param="prompt"
            )
        messages = [prompt_messages(p) for p in prompts]
        responses = self._generate(messages, adapter, name, sampling_options(data, chat=False))
        choices = []
        for response in responses:
            for text, reason in choice_texts(response):
                choices.append(
                    {"index": len(choices), "text": text, "logprobs": None, "finish_reason": reason}
                )
        return 200, completion_body("cmpl", "text_completion", name, choices, responses)

    def _generate(self, conversations, adapter: str | None, name: str, sampling: dict) -> list:
        try:
            requests = [Request(messages=tuple(m), **sampling) for m in conversations]
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        futures = self.engine.submit(
            requests,
            [adapter] * len(requests),
            max_new_tokens=self.lm.max_new_tokens,
            max_batch_size=self.lm.max_batch_size,
            batch_wait_ms=self.lm.batch_wait_ms,
            model=name,
        )
        responses = []
        for future in futures:
            try:
                responses.append(future.result())
            except ValueError as exc:  # the request itself (e.g. max_tokens)
                raise HTTPError(400, str(exc)) from None
            except LMError as exc:  # the model failed, or the adapter went away meanwhile
                raise HTTPError(500, str(exc)) from None
        return responses

    # -- runtime adapters (vLLM's endpoints) --------------------------------------------------
    def load_lora_adapter(self, body: bytes) -> tuple[int, Any]:
        self._check_runtime_loading()
        data = json_object(body)
        name, path = data.get("lora_name"), data.get("lora_path")
        if not (isinstance(name, str) and name and isinstance(path, str) and path):
            raise HTTPError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        inplace = data.get("load_inplace", False)
        if not isinstance(inplace, bool):
            raise HTTPError(400, f"'load_inplace' must be true or false, got {inplace!r}")
        if name == self.model_name:
            raise HTTPError(400, f"{name!r} is the base model's name; give the adapter another")
        if name in self.engine.adapter_names() and not inplace:
            raise HTTPError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        folder = self._confine(path)
        try:
            digest = self.engine.load_adapter(name, folder, replace=inplace)
        except FileNotFoundError as exc:
            raise HTTPError(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        except Exception as exc:  # peft refused the weights (e.g. shapes of another base)
            log.exception("loading adapter %r from %s failed", name, folder)
            raise HTTPError(
                400, f"cannot load adapter {name!r} from {folder}: {type(exc).__name__}: {exc}"
            ) from None
        log.info("runtime load: adapter %r from %s (hash %s)", name, folder, digest)
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora_adapter(self, body: bytes) -> tuple[int, Any]:
        self._check_runtime_loading()
        name = json_object(body).get("lora_name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        try:
            self.engine.unload_adapter(name)
        except KeyError:
            raise HTTPError(404, f"The lora adapter '{name}' cannot be found.") from None
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        log.info("runtime unload: adapter %r", name)
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _check_runtime_loading(self) -> None:
        if self.adapter_root is None:
            raise HTTPError(
                403,
                "runtime adapter loading is off: start the server with an adapter root "
                "(--adapter-root DIR); adapters under it can then be loaded and unloaded",
            )

    def _confine(self, path: str) -> Path:
        """The adapter directory ``path`` names (relative paths start at the root), refused
        unless it and every file in it resolve inside the adapter root."""
        root = self.adapter_root
        try:
            candidate = Path(path).expanduser()
            resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, ...
            raise HTTPError(400, f"lora_path {path!r} is not a usable path: {exc}") from None
        if not resolved.is_relative_to(root):
            raise HTTPError(
                400,
                f"lora_path {path!r} resolves to {resolved}, outside the adapter root {root}: "
                "only adapters under the root can be loaded",
                param="lora_path",
            )
        if resolved.is_dir():
            for file in resolved.iterdir():
                if not file.resolve().is_relative_to(root):
                    raise HTTPError(
                        400,
                        f"{file} links to {file.resolve()}, outside the adapter root {root}",
                        param="lora_path",
                    )
        return resolved
