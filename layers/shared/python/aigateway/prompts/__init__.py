"""Prompt templates: load and validate, render sandboxed, validate model output."""

from aigateway.prompts.registry import PromptTemplate, TemplateRegistry, get_registry
from aigateway.prompts.render import render_messages

__all__ = ["PromptTemplate", "TemplateRegistry", "get_registry", "render_messages"]
