"""``environment:``, of the project or of a service: static values and dotenv files."""

from __future__ import annotations

from typing import Any

from .._decode import describe, did_you_mean
from .._issues import KeyPath
from .._model import EnvironmentSpec, EnvProvider
from ._common import BuilderBase, TemplateScope

__all__ = ["KNOWN_ENV_PROVIDERS", "Environment"]

KNOWN_ENV_PROVIDERS = ("static", "dotenv", "vault", "1password", "aws-secrets")


def _provider_problem(provider: str) -> str:
    if provider in KNOWN_ENV_PROVIDERS:
        return (f"environment provider '{provider}' is not implemented by this Hive: put the "
                "values in environment.static, or in a .env file (environment.dotenv)")
    hint = did_you_mean(provider, ("static", "dotenv"))
    return f"unknown environment provider '{provider}'{hint}: Hive has static and dotenv"


class Environment(BuilderBase):
    """The environment section. State: decoder, sink, root, defaults (via
    ``_apply_defaults``)."""

    def environment(
        self, value: Any, path: KeyPath, scope: TemplateScope | None
    ) -> EnvironmentSpec | None:
        if value is None:
            return EnvironmentSpec()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        static: dict[str, str] = {}
        providers: list[EnvProvider] = []
        for provider, settings in value.items():
            provider_path = (*path, provider)
            if provider == "static":
                static = self._static_env(settings, provider_path, scope)
                continue
            if provider != "dotenv":
                self.sink.error(provider_path, _provider_problem(provider))
                continue
            if settings is None:
                settings = {}
            if not self._expect_mapping(settings, provider_path):
                continue
            settings = self._apply_defaults(f"hive.env.{provider}", settings, provider_path)
            if provider == "dotenv":
                files = self._dotenv_files(settings, provider_path)
                if files is not None:
                    providers.append(EnvProvider(type="dotenv", config={"files": files}))
            else:
                providers.append(EnvProvider(type=provider, config=settings))
        if self._error_count() > start:
            return None
        return EnvironmentSpec(static=static, providers=providers)

    def _static_env(
        self, value: Any, path: KeyPath, scope: TemplateScope | None
    ) -> dict[str, str]:
        if value is None or not self._expect_mapping(value, path):
            return {}
        static: dict[str, str] = {}
        for key, item in value.items():
            item_path = (*path, key)
            if key == "" or "=" in key or "\0" in key:
                self.sink.error(item_path, f"invalid environment variable name {key!r}")
                continue
            # A C-written `PORT: 8080` is unambiguous: it means the text "8080".
            text = self.decoder.scalar_as_text(item, item_path, allow_bool=True)
            if not isinstance(text, str):
                self.sink.error(item_path, f"expected a string, got {describe(text)}")
                continue
            if "\0" in text:
                self.sink.error(item_path, "environment values cannot contain NUL characters")
                continue
            self._check_templates(text, item_path, scope)
            static[key] = text
        return static

    def _dotenv_files(self, settings: dict[str, Any], path: KeyPath) -> list[str] | None:
        self.decoder.warn_unknown_keys(settings, ("files", "file"), path)
        if "files" in settings and "file" in settings:
            self.sink.error(path, "use either 'files' or 'file', not both")
            return None
        names: Any = [".env"]
        keys: list[KeyPath] = [path]
        if settings.get("files") is not None:
            names = self.decoder.decode(settings["files"], list[str], (*path, "files"))
            keys = [(*path, "files", index) for index in range(len(names or []))]
        elif settings.get("file") is not None:
            name = self.decoder.decode(settings["file"], str, (*path, "file"))
            names = None if name is None else [name]
            keys = [(*path, "file")]
        if names is None:
            return None
        return [self._resolve(self.root, name, key) for name, key in zip(names, keys, strict=True)]
