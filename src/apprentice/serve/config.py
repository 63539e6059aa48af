"""How a compiled program's student is served: the ``serve`` section of a recipe and the
``serve=`` argument of ``BootstrapFinetune``.

The serving layer owns this config (the recipe only embeds it), so binding a student to a
backend needs nothing from the pipeline above it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from apprentice.config import ConfigSection

__all__ = ["ServeConfig"]


class ServeConfig(ConfigSection):
    """``backend``: ``local`` (transformers + peft in this process; CPU or GPU, T5 too),
    ``vllm`` (vLLM in this process; causal students, on a GPU or with vLLM's CPU build) or
    ``openai`` (a running
    OpenAI-compatible server -- ``apprentice serve`` or ``vllm serve --enable-lora`` -- that
    the adapters are loaded into by name through ``/v1/load_lora_adapter``)."""

    backend: Literal["local", "vllm", "openai"] = "local"
    device: str | None = Field(None, description="local: cpu, cuda, cuda:1; None picks")
    max_batch_size: int = Field(64, ge=1, description="requests that share one generate call")
    max_new_tokens: int = Field(256, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights and activations; auto: the dtype the student trained in (its "
        "manifest), else float32 on a CPU, bf16 on a GPU",
    )
    # vllm
    kv_cache_gib: float | None = Field(
        None, gt=0, description="vllm: KV cache memory (RAM on the CPU build; None: 1 GiB there)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm on a GPU: share of its memory (unless kv_cache_gib)"
    )
    max_model_len: int | None = Field(None, ge=1, description="vllm: context length; None: model's")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs a layer is split over")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: GPUs the layers are split over")
    # openai
    base_url: str | None = Field(None, description="openai: the server, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(None, description="openai: variable holding the server's key")
    model: str | None = Field(
        None, description="openai: the base model's id at the server; None: the student's path"
    )

    @model_validator(mode="after")
    def _backend_options(self) -> ServeConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(
                "serve.backend 'openai' needs serve.base_url (the server the adapters are "
                "loaded into, e.g. http://127.0.0.1:8000/v1)"
            )
        if self.backend != "vllm" and (
            self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1
        ):
            raise ValueError(
                "serve.tensor_parallel_size / pipeline_parallel_size apply to backend 'vllm' "
                f"only (backend is {self.backend!r}); a server started by 'vllm serve' takes "
                "them on its own command line"
            )
        return self
