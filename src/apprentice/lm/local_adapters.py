"""Adapters inside a LocalEngine's model: each load goes into a fresh peft slot, so it is atomic.

The engine serves an adapter under its name and keeps it in peft under a slot name of its
own (``slot-1``, ``slot-2``, ...). A load fills a new slot; only once it has fully
succeeded does the engine point the name at it (and, for an in-place load, delete the old
slot). A load that fails deletes whatever peft registered for the new slot, and on a model
that had no adapter yet takes the LoRA layers out again, so the model serves exactly what
it served before: the base and every live adapter give the same outputs, with the same
parameters.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from typing import Any

from apprentice.lm.adapter_files import AdapterFiles
from apprentice.lm.engine import AdapterLoadError, check_adapter_name

__all__ = ["AdapterLoadError", "add_slot", "check_adapter_name", "merge_adapter", "remove_slot"]

log = logging.getLogger(__name__)


def add_slot(model: Any, slot: str, files: AdapterFiles, device: str) -> Any:
    """The model with ``files`` loaded under peft adapter name ``slot``: the same PeftModel,
    or on the first adapter the base model wrapped in one. On failure the model is left as
    it was and AdapterLoadError says why."""
    from peft import PeftConfig, PeftModel, get_peft_model

    wrapped = isinstance(model, PeftModel)
    peft_model = model if wrapped else None
    with tempfile.TemporaryDirectory(prefix="apprentice-adapter-") as staged, _quiet():
        files.stage(staged)
        try:
            if not wrapped:  # peft's from_pretrained, in two steps, to see the load's result
                config = PeftConfig.from_pretrained(staged)
                config.inference_mode = True
                peft_model = get_peft_model(model, config, adapter_name=slot)
            result = peft_model.load_adapter(staged, adapter_name=slot, is_trainable=False)
            _check_complete(result, files)
            return peft_model.to(device).eval()
        except Exception as exc:
            _roll_back(model, peft_model, slot, wrapped)
            if isinstance(exc, AdapterLoadError):
                raise
            raise AdapterLoadError(
                f"the adapter does not fit this model: {type(exc).__name__}: {exc}"
            ) from None


def remove_slot(model: Any, slot: str) -> Any:
    """The model without adapter ``slot``; the plain base model once no adapter is left."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "adapter was active, setting another active"
        if len(model.peft_config) > 1:
            model.delete_adapter(slot)
            return model
        return model.unload().eval()


def merge_adapter(model: Any, files: AdapterFiles) -> Any:
    """The base model with the adapter's weights folded in (nothing is written to disk)."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="apprentice-adapter-") as staged, _quiet():
        merged = PeftModel.from_pretrained(model, files.stage(staged), is_trainable=False)
    return merged.merge_and_unload().eval()


def _check_complete(result: Any, files: AdapterFiles) -> None:
    """peft loads what matches and only warns about the rest: a tensor the model has no
    place for, or a LoRA module the file has no weights for, is refused here."""
    missing = list(getattr(result, "missing_keys", []))  # peft keeps this adapter's only
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise AdapterLoadError(
            f"the adapter does not fit this model: {len(missing)} of its LoRA weights are "
            f"missing from the file (e.g. {missing[:2]}) and {len(unexpected)} tensors in the "
            f"file match no module of the model (e.g. {unexpected[:2]})"
        )


def _roll_back(model: Any, peft_model: Any, slot: str, wrapped: bool) -> None:
    """Undoes a failed load into ``slot``: peft's registration and every layer it touched."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if wrapped:
        if slot in peft_model.peft_config:
            with contextlib.suppress(Exception):
                peft_model.delete_adapter(slot)
        peft_model.peft_config.pop(slot, None)
        for module in peft_model.modules():  # a half-done injection: layers peft did not list
            if isinstance(module, BaseTunerLayer):
                module.delete_adapter(slot)
        return
    # The first adapter: take every LoRA layer out of the base model again.
    if peft_model is not None:
        with contextlib.suppress(Exception):
            peft_model.unload()
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    log.info("rolled back a failed first adapter load: the base model is plain again")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        warnings.filterwarnings("ignore", ".*missing adapter keys", UserWarning)  # checked here
        yield
