"""The routes of apprentice's OpenAI-compatible server (see ``serve.server``), apart from
the HTTP plumbing: ``ServingApp.handle`` takes a method, path, headers and body and gives
back a status and a JSON body, a plain-text body or None, or raises ``HTTPError``.

Generation hands each request to the shared ``LocalEngine`` (``engine.submit``) and waits
for it: the engine's batching thread gathers what the server's threads submit together.
While it waits it watches the client; if the client leaves, the request is cancelled.

Model ids are names: the base model's (``model_name``) and each adapter's. No reply shows a
server path: ``/v1/models`` gives ids, content hashes and the context length, and a load
error names the path as the client sent it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apprentice.lm.adapter_files import OutsideRootError
from apprentice.lm.base import LMError, Request
from apprentice.lm.local_adapters import AdapterLoadError
from apprentice.lm.local_engine import AdapterNotLoaded
from apprentice.serve.protocol import (
    MAX_PROMPTS,
    ClientGone,
    HTTPError,
    authorize,
    chat_messages,
    check_request_size,
    choice_texts,
    completion_body,
    json_object,
    prompt_messages,
    sampling_options,
    template_options,
)

if TYPE_CHECKING:
    from apprentice.lm.local import LocalLM

__all__ = ["ServingApp"]

log = logging.getLogger(__name__)

WATCH_S = 0.1  # how often a waiting request checks that its client is still there


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

    def handle(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes,
        client_gone: Callable[[], bool] = lambda: False,
    ) -> tuple[int, Any]:
        """``target`` is the request's path (a query is ignored); ``client_gone`` tells
        whether the client has left: a generation then stops and ClientGone is raised."""
        return self.admit(method, target, headers)(body, client_gone)

    def admit(self, method: str, target: str, headers: Any) -> Callable:
        """The route that answers this request, from its head alone (the HTTP layer calls
        this before it reads a byte of the body): a 401 without the API key, a 404 or 405
        for a route this server does not have."""
        path = urlsplit(target).path
        if path.startswith("/v1/"):
            authorize(headers.get("Authorization"), self.api_key)
        route = self.routes.get((method, path))
        if route is None:
            if any(path == p for _, p in self.routes):
                raise HTTPError(405, f"{path} does not take {method}")
            known = sorted({p for _, p in self.routes})
            raise HTTPError(404, f"no route {method} {path}; this server serves {known}")
        return route

    # -- models ------------------------------------------------------------------------
    def health(self, body: bytes, client_gone=None) -> tuple[int, Any]:
        return 200, None

    def models(self, body: bytes, client_gone=None) -> tuple[int, Any]:
        cards = [self._card(self.model_name, None, None)]
        for name in self.engine.adapter_names():
            digest = self.engine.adapter_hash(name)
            if digest is not None:  # else unloaded since the names were listed
                cards.append(self._card(name, self.model_name, digest))
        return 200, {"object": "list", "data": cards}

    def _card(self, name: str, parent: str | None, digest: str | None) -> dict:
        card = {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "apprentice",
            "root": name,  # vLLM puts a path here; ids are names, paths stay private
            "parent": parent,
            "max_model_len": self.engine.max_model_len,
            "permission": [],
        }
        if digest is not None:
            card["adapter_hash"] = digest  # of the bytes that were loaded
        return card

    def _adapter_for(self, data: dict[str, Any]) -> tuple[str | None, str]:
        """(adapter or None for the base, the model name answered) from the ``model`` field."""
        name = data.get("model")
        if name is None or name == "" or name == self.model_name:
            return None, self.model_name  # as vLLM: no model means the base model
        if not isinstance(name, str):
            raise HTTPError(400, f"'model' must be a string, got {name!r:.100}", param="model")
        if name in self.engine.adapter_names():
            return name, name
        raise self._no_model(name)

    def _no_model(self, name: str) -> HTTPError:
        served = [self.model_name, *self.engine.adapter_names()]
        return HTTPError(
            404, f"The model `{name:.300}` does not exist; served: {served}", param="model"
        )

    # -- generation ----------------------------------------------------------------------
    def chat_completions(self, body: bytes, client_gone) -> tuple[int, Any]:
        data = json_object(body)
        adapter, name = self._adapter_for(data)
        messages = chat_messages(data.get("messages"))
        sampling = sampling_options(data, chat=True)
        template = template_options(data)
        [response] = self._generate([messages], adapter, name, sampling, client_gone, template)
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

    def completions(self, body: bytes, client_gone) -> tuple[int, Any]:
        data = json_object(body)
        adapter, name = self._adapter_for(data)
        prompt = data.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, list)
            or not 0 < len(prompts) <= MAX_PROMPTS
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise HTTPError(
                400,
                f"'prompt' must be a string or a list of 1-{MAX_PROMPTS} strings",
                param="prompt",
            )
        messages = [prompt_messages(p) for p in prompts]
        sampling = sampling_options(data, chat=False)
        responses = self._generate(messages, adapter, name, sampling, client_gone)
        choices = []
        for response in responses:
            for text, reason in choice_texts(response):
                choices.append(
                    {"index": len(choices), "text": text, "logprobs": None, "finish_reason": reason}
                )
        return 200, completion_body("cmpl", "text_completion", name, choices, responses)

    def _generate(
        self, conversations, adapter, name: str, sampling: dict, client_gone, template=None
    ) -> list:
        n, max_tokens = sampling["n"], sampling["max_tokens"]
        default, context = self.lm.max_new_tokens, self.engine.max_model_len
        check_request_size(len(conversations), n, max_tokens, default, context)
        try:
            requests = [Request(messages=tuple(m), **sampling) for m in conversations]
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        cancel = threading.Event()
        futures = self.engine.submit(
            requests,
            [adapter] * len(requests),
            max_new_tokens=self.lm.max_new_tokens,
            max_batch_size=self.lm.max_batch_size,
            batch_wait_ms=self.lm.batch_wait_ms,
            model=name,
            cancel=cancel,
            template=template,
        )
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=WATCH_S)
            if pending and client_gone():
                cancel.set()  # queued jobs are dropped, running rows end at the next step
                raise ClientGone
        responses = []
        for future in futures:
            try:
                responses.append(future.result())
            except ValueError as exc:  # the request itself (e.g. max_tokens past the context)
                raise HTTPError(400, str(exc)) from None
            except AdapterNotLoaded:  # unloaded while the request waited
                raise self._no_model(name) from None
            except CancelledError:
                raise ClientGone from None
            except LMError as exc:  # the model failed: the log has the details
                log.error("generation for %r failed: %s", name, exc)
                raise HTTPError(
                    500, "generation failed; the server's log has the details"
                ) from None
        return responses

    # -- runtime adapters (vLLM's endpoints) --------------------------------------------------
    def load_lora_adapter(self, body: bytes, client_gone=None) -> tuple[int, Any]:
        self._check_runtime_loading()
        data = json_object(body)
        name, path = data.get("lora_name"), data.get("lora_path")
        if not (isinstance(name, str) and name and isinstance(path, str) and path):
            raise HTTPError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        inplace = data.get("load_inplace", False)
        if not isinstance(inplace, bool):
            raise HTTPError(400, f"'load_inplace' must be true or false, got {inplace!r:.100}")
        if name == self.model_name:
            raise HTTPError(400, f"{name!r} is the base model's name; give the adapter another")
        if name in self.engine.adapter_names() and not inplace:
            raise HTTPError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        # The engine opens the files under the root, checks where each open file really is,
        # and loads and hashes the bytes it read: no path is trusted after its check.
        try:
            digest = self.engine.load_adapter(name, path, replace=inplace, root=self.adapter_root)
        except FileNotFoundError as exc:
            raise HTTPError(404, str(exc), param="lora_path") from None
        except OutsideRootError as exc:
            raise HTTPError(400, str(exc), param="lora_path") from None
        except AdapterLoadError as exc:  # the weights do not fit: nothing was changed
            raise HTTPError(400, f"cannot load adapter {name!r} from {path!r}: {exc}") from None
        except ValueError as exc:  # a name or path the engine refuses
            raise HTTPError(400, str(exc)) from None
        log.info("runtime load: adapter %r from %r (hash %s)", name, path, digest)
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora_adapter(self, body: bytes, client_gone=None) -> tuple[int, Any]:
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
