"""Upstream adapters, chosen per deployment by the config's ``provider`` name."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aigw.providers.base import Provider, StreamTranslator

if TYPE_CHECKING:
    from aigw.config import DeploymentConfig

__all__ = [
    "PROVIDERS",
    "Provider",
    "StreamTranslator",
    "make_provider",
]

# name -> "module:factory"; each factory takes a DeploymentConfig and returns a Provider.
PROVIDERS: dict[str, str] = {
    "openai": "aigw.providers.openai:OpenAIProvider",
    "anthropic": "aigw.providers.anthropic:AnthropicProvider",
}


def make_provider(config: DeploymentConfig) -> Provider:
    module_name, _, attr = PROVIDERS[config.provider].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    provider: Provider = factory(config)
    return provider
