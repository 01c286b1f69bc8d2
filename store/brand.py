"""The brand rules in force: ``TAILOR_BRAND_RULES`` (a JSON file) or the built-in ones."""

from __future__ import annotations

from config.settings import Settings
from engine.content.brand import DEFAULT_RULES, BrandRules, load_brand_rules


def brand_rules(settings: Settings) -> BrandRules:
    """The rules of ``settings.store.brand_rules``; a file that cannot be read is a `ValueError` saying so."""
    if not settings.store.brand_rules:
        return DEFAULT_RULES
    try:
        with open(settings.store.brand_rules, "rb") as f:
            return load_brand_rules(f.read())
    except OSError as exc:
        raise ValueError(f"TAILOR_BRAND_RULES={settings.store.brand_rules!r} cannot be read: {exc.strerror}") from None
