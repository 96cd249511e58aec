"""YAML documents that remember where each key stands, and typed validation against them.

Every policy, rule and example file Yoroi reads goes through :func:`read_yaml` and
:func:`validate`, so that an error always names the file, the line, the key and what is
expected, e.g.::

    agent.yaml:12: agent.events.sinks[0].port: Input should be a valid integer (got 'abc')
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from yoroi.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML with the 1-based line of every mapping key and list item."""

    data: Any
    source: str
    lines: Mapping[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its deepest ancestor that the document contains."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def where(self, loc: Loc) -> str:
        """``file:line`` (or just ``file``) for a message."""
        line = self.line_of(loc)
        return f"{self.source}:{line}" if line is not None else self.source


def read_yaml(path: Path) -> YamlDocument:
    """Read and parse one YAML file; every failure is a :class:`ConfigError`."""
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes; not a policy")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as root or fix the mode)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document, rejecting duplicate keys and several documents."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{source}: not a YAML text: character {exc.character!r} "
                          f"at offset {exc.position}") from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    if node is not None:
        _index(node, (), lines, source)
    return YamlDocument(data=data, source=source, lines=lines)


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], source: str) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise ConfigError(
                    f"{source}:{line}: {_dotted(loc + (key,))}: duplicate key "
                    f"(first given at line {seen[key]}); keep one"
                )
            seen[key] = line
            lines[loc + (key,)] = line
            _index(value_node, loc + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, loc + (index,), lines, source)


def validate(doc: YamlDocument, model: type[M], data: Any, prefix: Loc = ()) -> M:
    """Validate ``data`` (the part of ``doc`` at ``prefix``) as ``model``."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(
            f"{doc.source}: invalid", problems(exc, doc, model, prefix)
        ) from None


def problems(
    exc: ValidationError, doc: YamlDocument, model: type[BaseModel], prefix: Loc
) -> list[str]:
    """One message per validation error, each with file, line, key and expectation."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        key = _dotted(loc) or "(document)"
        out.append(f"{doc.where(loc)}: {key}: {_explain(err, model, tuple(err['loc']))}")
    return out


def _explain(err: Any, model: type[BaseModel], loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
        message += f" (got {value!r})"
    return message


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Best effort: the keys the model accepts at ``loc`` (for 'expected one of')."""
    candidates = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        deeper = [m for m in candidates if part in m.model_fields]
        if deeper:
            annotations = [m.model_fields[str(part)].annotation for m in deeper]
            candidates = [m for a in annotations for m in _models_in(a)]
        else:  # a discriminator tag or a free-form mapping key
            tagged = [m for m in candidates if _has_literal(m, part)]
            candidates = tagged or candidates
        if not candidates:
            return []
    if len(candidates) != 1:
        return []
    return sorted(f.alias or name for name, f in candidates[0].model_fields.items())


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
    elif origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def _has_literal(model: type[BaseModel], value: str) -> bool:
    for info in model.model_fields.values():
        if typing.get_origin(info.annotation) is typing.Literal and value in typing.get_args(
            info.annotation
        ):
            return True
    return False
